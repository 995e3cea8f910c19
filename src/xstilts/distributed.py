"""Data-parallel training of one phase over several processes (DDP semantics), launched by
`accelerate launch --num_processes N` (or `torchrun`): every process runs the same phases; each optimizer
step's micro-batches are the single-process schedule's, sliced by rank (`rows[rank::world]`), and the
gradients are summed over ranks once per optimizer step (after accumulation, one flat all-reduce) with each
rank's loss divided by the *global* micro-batch size, so the update is the single-process update up to
floating-point summation order. The process group comes from accelerate's `PartialState` (gloo on CPU,
NCCL on CUDA, one GPU per local rank). Only rank 0 writes checkpoints, best weights, results and DONE;
the others wait at a barrier and read what it wrote. Dropout masks differ from a single process's (each rank
draws its own for its rows), so only runs without dropout match a single process exactly."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch

from xstilts.errors import XstiltsError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes training together (0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the phase's files."""
        return self.rank == 0

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's rows of one global micro-batch."""
        return rows if self.world == 1 else rows[self.rank::self.world]

    def sum_gradients(self, parameters: list[torch.nn.Parameter], loss: float) -> float:
        """Sum gradients and the loss over ranks in place. A parameter no rank used keeps no gradient (the
        optimizer skips it, as it would alone); one used by only some ranks gets zeros from the others."""
        if self.world == 1:
            return loss
        first = parameters[0]
        used = [float(p.grad is not None) for p in parameters]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters]
                         + [torch.tensor(used + [loss], dtype=first.dtype, device=first.device)])
        torch.distributed.all_reduce(flat)  # one collective: gradients, which ranks used each, and the loss
        counts = flat[-len(used) - 1:-1].tolist()
        offset = 0
        for parameter, count in zip(parameters, counts):
            size = parameter.numel()
            parameter.grad = flat[offset:offset + size].view_as(parameter) if count else None  # views, no copies
            offset += size
        return float(flat[-1])

    def gather(self, value: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `value`, indexed by rank, on every rank (a collective: every rank calls it)."""
        if self.world == 1:
            return [value]
        found: list = [None] * self.world
        torch.distributed.all_gather_object(found, value)
        return found

    def decided_by_main(self, value: bool) -> bool:
        """Rank 0's `value` on every rank (e.g. whether a phase is already done), so that all ranks take the
        same path through the phase's barriers."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return bool(box[0])

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world > 1:
            torch.distributed.barrier()


@functools.cache
def current_ranks() -> Ranks:
    """The process group a launcher set up (WORLD_SIZE > 1), joined once; else a single process. A WORLD_SIZE
    that is not a number, or one left in the environment of a process no launcher started, is one line."""
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.strip().isdigit():
        raise XstiltsError(f"WORLD_SIZE={world!r} is not a number of processes; unset it for a single process")
    if int(world) <= 1:
        return Ranks()
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise XstiltsError(f"WORLD_SIZE={world} is set but no launcher started this process (no {', '.join(missing)}); "
                           "unset WORLD_SIZE, or start it with `accelerate launch` or `torchrun`")
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Ranks(state.process_index, state.num_processes)


"""Tracking of training phases (`log: tensorboard | wandb | none`): the scalars a phase records in its result
(`curve`: training loss, learning rate, examples/s and pieces/s; `history`: the dev scores) are also written, as
the loop records them, to TensorBoard event files or an offline Weights & Biases run in the phase folder's
`logs/`. The backends are optional extras (`pip install 'xstilts[tensorboard]'`); logging changes no result,
so it is in no node key."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import TracebackType

from xstilts.errors import XstiltsError

LOG_BACKENDS = ("none", "tensorboard", "wandb")
LOG_DIR = "logs"
CURVE_POINTS = 50  # about this many points of the training curve per phase (and the last step)
CURVE_TAGS = {"loss": "train/loss", "lr": "train/learning_rate", "examples_per_second": "train/examples_per_second",
              "tokens_per_second": "train/pieces_per_second"}


def check_backend(backend: str) -> None:
    """Nothing for 'none' or an installed backend; else one line naming the extra to install."""
    if backend != "none" and importlib.util.find_spec(backend) is None:
        raise XstiltsError(f"log {backend!r}: the {backend} package is not installed; "
                           f"pip install 'xstilts[{backend}]' (or log: none)")


def curve_scalars(point: dict) -> dict[str, float]:
    """A curve point's scalars by tag."""
    return {tag: float(point[key]) for key, tag in CURVE_TAGS.items() if point.get(key) is not None}


def dev_scalars(entry: dict) -> dict[str, float]:
    """A dev evaluation's scalars by tag: the mean over the phase's tasks and each task's score."""
    return {"dev/score": float(entry["score"]), **{f"dev/{head}": float(v) for head, v in entry["dev"].items()}}


class _TensorBoard:
    """TensorBoard event files (torch's writer); a resumed phase hides what the interrupted one wrote and
    writes its recorded points again."""

    def __init__(self, folder: Path, name: str, resumed: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=0 if resumed else None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    """An offline Weights & Biases run (`wandb sync` uploads it later); a resumed phase starts a new run."""

    def __init__(self, folder: Path, name: str, resumed: bool) -> None:
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(dir=str(folder), mode="offline", project="xstilts", name=name,
                              config={"resumed": resumed}, settings=wandb.Settings(console="off"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb}


class PhaseLog:
    """One phase's tracking: a context manager (the backend is checked on entry, closed on exit), opened once
    the phase knows where it starts (`begin`), then fed each curve point and dev evaluation the loop records.
    Does nothing for 'none' and on every process but the first."""

    def __init__(self, backend: str, folder: Path, name: str, enabled: bool = True) -> None:
        self.backend = backend if enabled else "none"
        self.folder, self.name = folder, name
        self.writer: _TensorBoard | _Wandb | None = None

    def __enter__(self) -> PhaseLog:
        check_backend(self.backend)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def begin(self, step: int, curve: list[dict], history: list[dict]) -> None:
        """Open the backend at `step` (0: a fresh phase) and write the points recorded before it, in step order."""
        if self.backend == "none":
            return
        self.writer = BACKENDS[self.backend](self.folder, self.name, resumed=step > 0)
        recorded: dict[int, dict[str, float]] = {}
        for entries, scalars in ((curve, curve_scalars), (history, dev_scalars)):
            for entry in entries:
                recorded.setdefault(entry["step"], {}).update(scalars(entry))
        for at, values in sorted(recorded.items()):
            self.writer.scalars(at, values)

    def curve(self, point: dict) -> None:
        """Write one point of the training curve."""
        if self.writer is not None:
            self.writer.scalars(point["step"], curve_scalars(point))

    def dev(self, entry: dict) -> None:
        """Write one dev evaluation (a history entry)."""
        if self.writer is not None:
            self.writer.scalars(entry["step"], dev_scalars(entry))

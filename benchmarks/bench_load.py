"""Throughput under load: training and evaluation alone, and beside one busy process (a bounded Python busy
loop on one core), for xstilts' CPU thread policy (threads follow the free cores) and for PyTorch's fixed
thread count. Each figure comes from its own subprocess.

    python benchmarks/bench_load.py            # ~6 min on a 2-core machine
    python benchmarks/bench_load.py --steps 4  # quicker, noisier

Writes benchmarks/results/load.json: per policy, pairs/s alone and loaded, and loaded / alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_DIR, write_results  # noqa: E402

# policy -> environment of the measured process
POLICIES = {
    "xstilts": {},  # threads follow the free cores (xstilts.cpu)
    "fixed threads (PyTorch's default)": {"XSTILTS_CPU_THREADS": "all"},
}
BURNER = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def measure(steps: int, pairs: int) -> dict:
    """Pairs/s of `steps` training steps (batch 32, MNLI) and of scoring `pairs` XNLI pairs, in this process."""
    import torch

    from xstilts.config import EvalData, TaskData, TrainConfig
    from xstilts.evaluation import predict
    from xstilts.phases import Context, load_trained, train_node
    from xstilts.tasks import load_registry

    ctx = Context.create("embedded", load_registry(), DATA_DIR, 128, "auto")
    out = Path(tempfile.mkdtemp())
    config = TrainConfig(max_steps=steps, batch_size=32, select_best=False, eval_every=10**6, checkpoint_every=10**6)
    try:
        result = train_node(ctx, out / "train", tasks=[TaskData(task="mnli", max_examples=32 * steps)], train=config,
                            seed=1, description="load")
        features, _ = ctx.rows(EvalData(task="xnli", split="test", languages=["en"], max_examples=pairs), 0)
        model = load_trained(ctx.model, out / "train")
        started = time.perf_counter()
        predict(model, "mnli", features, ctx.tokenizer.pad_token_id, ctx.precision, torch.device("cpu"))
        eval_seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"train_pairs_per_second": result["metrics"]["examples_per_second"],
            "eval_pairs_per_second": pairs / eval_seconds, "threads": torch.get_num_threads()}


def run_side(policy: str, loaded: bool, steps: int, pairs: int) -> dict:
    """One measurement in a fresh subprocess, with a busy loop on one core beside it when `loaded`."""
    burner = None
    if loaded:
        burner = subprocess.Popen([sys.executable, "-c", BURNER.format(seconds=900)])
        time.sleep(1.0)
    try:
        environment = {**os.environ, **POLICIES[policy]}
        output = subprocess.run([sys.executable, __file__, "--measure", "--steps", str(steps), "--pairs", str(pairs)],
                                env=environment, check=True, stdout=subprocess.PIPE, text=True).stdout
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per measurement")
    parser.add_argument("--pairs", type=int, default=300, help="XNLI pairs scored per measurement")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/load.json"))
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.steps, args.pairs)))
        return
    results = {}
    for policy in POLICIES:
        alone = run_side(policy, False, args.steps, args.pairs)
        loaded = run_side(policy, True, args.steps, args.pairs)
        results[policy] = {"alone": alone, "loaded": loaded, **{
            f"{kind}_loaded_over_alone": loaded[f"{kind}_pairs_per_second"] / alone[f"{kind}_pairs_per_second"]
            for kind in ("train", "eval")}}
        print(policy, json.dumps(results[policy]), file=sys.stderr)
    write_results(args.out, {"steps": args.steps, "pairs": args.pairs, "cpu_count": os.cpu_count(),
                             "policies": results})


if __name__ == "__main__":
    main()

"""Training benchmark: samples/s per worker, 1 vs 2 Ray Train CPU workers, tiny config.

Runs the project's real trainer (``training.trainer.run_training`` with the shipped ``quickstart``
config: tiny model, per-worker batch 128, synthetic scenes) for a fixed number of steps, once per
worker count, in alternating order over ``--rounds``. ``samples_per_s`` is what the training loop
itself reports (global samples per second of training time, checkpoint / validation pauses
excluded); per worker = global / workers. Start-up (Ray, data preparation) is reported separately
as wall time.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Timer, log, write_result


def one_run(workers: int, steps: int, train_size: int, work: Path, tag: str) -> dict[str, Any]:
    from training.config import load_config
    from training.trainer import run_training

    overrides = [
        f"run.work_dir={work / tag}",
        f"run.name=bench-{tag}",
        f"scaling.num_workers={workers}",
        f"optim.max_steps={steps}",
        "optim.warmup_steps=5",
        f"data.synthetic.train={train_size}",
        "data.synthetic.val=64",
        "validation.enabled=false",
        "run.log_every_steps=10",
    ]
    with Timer() as t:
        res = run_training(load_config("quickstart", overrides))
    m = res.metrics
    sps = float(m.get("samples_per_s", float("nan")))
    return {
        "workers": workers,
        "steps": int(m.get("step", steps)),
        "samples_per_s": sps,
        "samples_per_s_per_worker": sps / workers,
        "wall_s": t.s,
        "train_wall_s": res.wall_time_s,
        "loss": m.get("loss"),
    }


def run(
    *,
    smoke: bool = False,
    steps: int = 40,
    rounds: int = 1,
    workers: tuple[int, ...] = (1, 2),
    results_dir: Path | None = None,
    name: str = "train",
) -> Path:
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hivlp-bench-train-"))
    runs: list[dict[str, Any]] = []
    try:
        if smoke:
            runs.append(
                {
                    "workers": 1,
                    "steps": 0,
                    "samples_per_s": None,
                    "samples_per_s_per_worker": None,
                    "wall_s": 0.0,
                    "skipped": "smoke: Ray Train start-up alone exceeds the smoke budget",
                }
            )
        else:
            for r in range(rounds):
                order = list(workers) if r % 2 == 0 else list(reversed(workers))
                for w in order:
                    log(f"train: {w} worker(s), {steps} steps, round {r}")
                    runs.append({**one_run(w, steps, 2048, work, f"w{w}-r{r}"), "round": r})
                    log(
                        f"  {runs[-1]['samples_per_s']:.1f} samples/s ({runs[-1]['samples_per_s_per_worker']:.1f} "
                        "per worker)"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for w in workers:
        xs = [r["samples_per_s"] for r in runs if r["workers"] == w and r.get("samples_per_s")]
        if xs:
            summary[str(w)] = {
                "samples_per_s": float(np.median(xs)),
                "samples_per_s_per_worker": float(np.median(xs)) / w,
            }
    if "1" in summary and "2" in summary:
        summary["scaling_2_over_1"] = summary["2"]["samples_per_s"] / summary["1"]["samples_per_s"]
    return write_result(
        name,
        {
            "smoke": smoke,
            "config": "quickstart (tiny, batch 128 per worker)",
            "steps": steps,
            "runs": runs,
            "summary": summary,
            "wall_s": time.perf_counter() - t0,
        },
        results_dir=results_dir,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args(argv)
    run(smoke=a.smoke, steps=a.steps, rounds=a.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

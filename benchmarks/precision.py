"""Training step time by precision: float32 against bf16 autocast, side by side in one process.

``python -m benchmarks.precision`` times one optimizer step of the tiny model (forward, the full
HiVLP loss with ``itm``, backward, AdamW) on a batch of synthetic scenes, through the training
loop's own step (``training.step.forward_loss``), in three variants interleaved round by round so
a noisy machine slows them alike:

- ``fp32``: float32, NCHW pixels (the step before ``optim.precision: auto``);
- ``bf16 flash``: bf16 autocast and channels-last pixels, attention on the kernel torch picks (its
  CPU flash-attention kernel where it applies);
- ``bf16`` (what ``auto`` runs on a CPU with AVX512-BF16/AMX): the same with the math attention
  kernel, whose bf16 backward is several times faster than the flash kernel's on the CPU.

The result (``results/precision.json``) keeps every round's seconds, the medians and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmarks.common import log, write_result

VARIANTS = ("fp32", "bf16 flash", "bf16")


def run(*, batch_size: int = 128, rounds: int = 5, threads: int = 1, name: str = "precision") -> Any:
    """Time the variants and write ``results/<name>.json``; returns its path."""
    import torch

    from hivlp_milvus.data import synthetic
    from hivlp_milvus.device import cpu_has_native_bf16
    from hivlp_milvus.model import HiVLPLoss, LossConfig, create_model, get_config
    from training.step import forward_loss

    torch.set_num_threads(threads)
    scenes = synthetic.generate(batch_size, seed=0, image_size=64)
    loss_fn = HiVLPLoss(LossConfig(low=1, high=1, consistency=1, shortlist=0.5, shortlist_k=16, itm=1.0))
    setups: dict[str, Any] = {}
    for variant in VARIANTS:
        model = create_model(get_config("tiny"), texts=[c for r in scenes for c in r.captions], seed=0)
        model.train()
        tokens = model.tokenize([r.captions[0] for r in scenes])
        batch = {"pixel_values": model.preprocess_images([r.image for r in scenes]), "group": torch.arange(batch_size)}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        setups[variant] = (model, tokens, batch, optimizer)

    def step(variant: str) -> float:
        model, tokens, batch, optimizer = setups[variant]
        dtype = None if variant == "fp32" else torch.bfloat16
        pixels = batch["pixel_values"]
        start = time.perf_counter()
        if variant == "bf16 flash":  # forward_loss without its math-kernel choice: torch picks the kernel
            with torch.autocast("cpu", dtype=dtype):
                out = model(pixels.contiguous(memory_format=torch.channels_last), **_ids(tokens))
                loss = loss_fn(out, groups=batch["group"], step=1000)
        else:
            loss = forward_loss(model, loss_fn, batch, **_ids(tokens), step=1000, dtype=dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        return time.perf_counter() - start

    for variant in VARIANTS:  # warm-up: oneDNN builds its kernels on the first call
        step(variant)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for variant in VARIANTS:
            seconds[variant].append(statistics.fmean(step(variant) for _ in range(2)))
        log(f"precision round {r + 1}/{rounds}: " + ", ".join(f"{v} {seconds[v][-1]:.3f} s" for v in VARIANTS))
    median = {v: statistics.median(s) for v, s in seconds.items()}
    return write_result(
        name,
        {
            "model": "tiny",
            "batch_size": batch_size,
            "torch_threads": threads,
            "rounds": rounds,
            "native_bf16": cpu_has_native_bf16(),
            "seconds_per_step": seconds,
            "median_s": median,
            "speedup_vs_fp32": {v: median["fp32"] / median[v] for v in VARIANTS},
        },
    )


def _ids(tokens: Any) -> dict[str, Any]:
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=128, help="one Ray Train worker's batch in the quickstart")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the quickstart's workers use 1 each)")
    a = ap.parse_args(argv)
    print(run(batch_size=a.batch_size, rounds=a.rounds, threads=a.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

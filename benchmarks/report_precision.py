"""The ``precision.json`` section of ``BENCHMARKS.md``: a training step in float32 against bf16.

Standalone (it does not import ``benchmarks.report``), so ``report.py`` can import it at the top.
"""

from __future__ import annotations

from typing import Any

HEADING = "## Training precision (`optim.precision: auto`)"


def precision_section(res: dict[str, Any] | None) -> str:
    """Markdown for ``benchmarks/results/precision.json`` (a stub when it was not measured)."""
    if not res:
        return f"{HEADING}\n\nNot measured yet (`python -m benchmarks.precision`).\n"
    lines = [
        HEADING,
        "",
        f"One optimizer step of the tiny model (batch {res['batch_size']}, the full HiVLP loss with `itm`, "
        f"{res['torch_threads']} torch thread: one quickstart worker), {res['rounds']} interleaved rounds of "
        f"2 steps per variant (`{res['command']}`, {res['date'][:10]}; this CPU runs bf16 natively: "
        f"{'yes' if res['native_bf16'] else 'no'}).",
        "",
        "| variant | median s/step | speed-up vs fp32 | every round (s) |",
        "|---|---:|---:|---|",
    ]
    for variant, median in res["median_s"].items():
        rounds = ", ".join(f"{s:.2f}" for s in res["seconds_per_step"][variant])
        lines.append(f"| {variant} | {median:.3f} | {res['speedup_vs_fp32'][variant]:.2f}x | {rounds} |")
    lines += [
        "",
        "`bf16` is what `optim.precision: auto` runs on such a CPU (bf16 autocast, channels-last "
        "pixels, the math attention kernel: `training.step.forward_loss`); `bf16 flash` keeps torch's "
        "default CPU attention kernel, whose bf16 backward is the slow part. The quickstart's whole "
        "training stage gains less than the step (docs/training.md): Ray's data feed, DDP and "
        "validation do not get faster.",
        "",
    ]
    return "\n".join(lines)

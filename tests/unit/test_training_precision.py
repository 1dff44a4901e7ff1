"""Training precision: which dtype a step runs in, and that a bf16 step trains what a float32 one does.

``optim.precision: auto`` (the quickstart and emoji configs) trains in bf16 autocast where the
device runs it natively, which on a CPU with AVX512-BF16 or AMX made a step of the tiny model
1.65-2x faster (BENCHMARKS.md, "Training precision"). The step below is the training loop's own
(``training.step.forward_loss``), with every HiVLP term and ``itm`` on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hivlp_milvus.device as device_mod
from hivlp_milvus.data import synthetic
from hivlp_milvus.device import check_training_precision, cpu_has_native_bf16, training_autocast_dtype
from hivlp_milvus.errors import ConfigError
from hivlp_milvus.model import HiVLPLoss, LossConfig, create_model, get_config
from training.step import forward_loss

CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not CPUINFO.exists(), reason="no /proc/cpuinfo to read the CPU's flags from (not Linux)")
def test_native_bf16_probe_agrees_with_the_cpu_flags() -> None:
    flags = {f for line in CPUINFO.read_text().splitlines() if line.startswith("flags") for f in line.split()}
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_tile"} & flags)


def test_precision_choice_on_the_cpu() -> None:
    native = cpu_has_native_bf16()
    assert training_autocast_dtype("fp32", "cpu") is None
    assert training_autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert training_autocast_dtype("auto", "cpu") is (torch.bfloat16 if native else None)
    check_training_precision("fp32", "cpu")
    check_training_precision("auto", "cpu")  # never refused: it falls back to float32
    if native:
        check_training_precision("bf16", "cpu")
    else:
        with pytest.raises(ConfigError, match="no native bf16"):
            check_training_precision("bf16", "cpu")


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake: a CPU without AVX512-BF16/AMX cannot be produced on a machine that has them.
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match=r"no native bf16 \(AVX512-BF16 or AMX.*set optim.precision=fp32"):
        check_training_precision("bf16", "cpu")
    assert training_autocast_dtype("auto", "cpu") is None


def _step(model, pixels, tokens, groups, dtype):  # noqa: ANN001, ANN202
    model.zero_grad(set_to_none=True)
    loss_fn = HiVLPLoss(LossConfig(low=1, high=1, consistency=1, shortlist=0.5, shortlist_k=4, itm=1.0))
    batch = {"pixel_values": pixels, "group": groups}
    loss = forward_loss(model, loss_fn, batch, tokens["input_ids"], tokens["attention_mask"], step=10, dtype=dtype)
    loss.total.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss, grads


def test_a_bf16_step_trains_what_a_float32_step_does() -> None:
    scenes = synthetic.generate(16, seed=3, image_size=64)
    model = create_model(get_config("tiny"), texts=[c for r in scenes for c in r.captions], seed=0)
    model.eval()  # no dropout: both steps see the same network
    pixels = model.preprocess_images([r.image for r in scenes])
    tokens = model.tokenize([r.captions[0] for r in scenes])
    groups = torch.arange(len(scenes))
    torch.manual_seed(0)
    ref, ref_grads = _step(model, pixels, tokens, groups, None)
    torch.manual_seed(0)  # itm samples its negatives: the same draw
    low, grads = _step(model, pixels, tokens, groups, torch.bfloat16)

    assert torch.isfinite(low.total)
    assert set(low.parts) == set(ref.parts)
    assert "itm" in low.parts
    for term, value in ref.parts.items():
        assert float(low.parts[term]) == pytest.approx(float(value), rel=0.05, abs=0.02), term
    # Every parameter float32 trains gets a gradient, pointing the same way (bf16 keeps ~3 digits).
    assert set(grads) == set(ref_grads)
    assert any(n.startswith("fusion.") for n in grads)
    for name, g in ref_grads.items():
        if g.norm() > 1e-6:
            cos = torch.nn.functional.cosine_similarity(g.flatten(), grads[name].flatten(), dim=0)
            assert cos > 0.9, (name, float(cos))

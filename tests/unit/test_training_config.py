"""TrainConfig: YAML loading, key=value overrides, validation messages, the shipped configs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from hivlp_milvus.errors import ConfigError
from training.checkpoint import TRAINING_FILES, TrainingState, export_model, load_training_state
from training.config import TrainConfig, apply_overrides, is_uri, load_config, shipped_config
from training.data import decoded_bytes, plan_epoch, select_captions, should_cache_decoded, shuffle_seed
from training.loop import flatten_eval, lr_factor

SHARED_STORAGE = ("s3://", "gs://", "/mnt/shared")


# -- loading and overrides ---------------------------------------------------------------------


def test_yaml_and_overrides_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"config": "micro"},
                "data": {"synthetic": {"train": 64, "val": 16}},
                "optim": {"lr": "3e-4", "batch_size": 8},
                "run": {"name": "t"},
            }
        )
    )
    cfg = load_config(
        path,
        [
            "optim.lr=1e-4",  # YAML 1.1 reads this as a string; the loader means the number
            "scaling.num_workers=3",
            "validation.coarse_ks=[50, 10]",
            "model.overrides.low_dim=8",
            "run.step_log=null",
        ],
    )
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.optim.batch_size == 8
    assert cfg.scaling.num_workers == 3
    assert cfg.validation.coarse_ks == (10, 50)
    assert cfg.model.resolve().low_dim == 8
    assert cfg.run.step_log is None
    # to_dict -> from_dict is the identity (what --dry-run prints can be fed back).
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg.to_dict()


def test_overrides_do_not_mutate_input_and_create_sections() -> None:
    data = {"optim": {"lr": 1.0}}
    out = apply_overrides(data, ["optim.lr=0.5", "loss.shortlist_k=8"])
    assert data == {"optim": {"lr": 1.0}}
    assert out == {"optim": {"lr": 0.5}, "loss": {"shortlist_k": 8}}


def test_inline_model_config_and_frozen_sections() -> None:
    cfg = TrainConfig.from_dict({"model": {"config": {"low_dim": 8, "high_dim": 32, "text": {"vocab_size": 500}}}})
    resolved = cfg.model.resolve()
    assert (resolved.low_dim, resolved.high_dim, resolved.text.vocab_size) == (8, 32, 500)
    with pytest.raises(TypeError):
        cfg.model.config["low_dim"] = 4  # read-only view: the dataclass is frozen all the way down
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):
        dataclasses.replace(cfg.optim, lr=0)  # a copy is validated too


# What `--dry-run` printed before the configs were pydantic: it must still load, to the same values.
OLD_DRY_RUN = {
    "model": {"config": "tiny", "overrides": {}, "init_checkpoint": None},
    "loss": {"low": 1.0, "high": 1.0, "consistency": 1.0, "shortlist": 0.5, "shortlist_k": 16,
             "shortlist_start_step": 140},
    "data": {"train": None, "train_split": None, "val": None, "val_split": None, "image_root": None,
             "synthetic": {"train": 10000, "val": 500, "seed": 0, "image_size": 64}, "max_captions": 5,
             "shuffle_buffer": 2048, "preprocess_batch_size": 128, "num_blocks": None},
    "optim": {"lr": 0.001, "weight_decay": 0.05, "betas": [0.9, 0.98], "eps": 1e-06, "warmup_steps": 50,
              "min_lr_ratio": 0.0, "epochs": 6, "max_steps": None, "batch_size": 128, "grad_accum_steps": 1,
              "clip_norm": 1.0, "precision": "fp32", "seed": 0},
    "scaling": {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1.0}, "placement_strategy": "PACK",
                "find_unused_parameters": False},
    "run": {"name": "quickstart", "work_dir": "runs/quickstart", "storage_path": None, "ray_address": None,
            "checkpoint_every_steps": 0, "num_to_keep": 2, "max_failures": 1, "log_every_steps": 20, "step_log": None,
            "export": "last"},
    "validation": {"enabled": True, "coarse_ks": [10, 50], "max_items": 500, "batch_size": 128},
}  # fmt: skip


def test_old_dry_run_output_loads_to_the_same_config() -> None:
    cfg = TrainConfig.from_dict(OLD_DRY_RUN)
    shipped = load_config("quickstart")
    assert shipped.loss["itm"] > 0  # the one key added since (the fusion block's match loss)
    assert shipped.optim.precision == "auto"  # the one value changed since (fp32 then: bf16 where native now)
    assert cfg == dataclasses.replace(
        shipped,
        loss={k: v for k, v in shipped.loss.items() if k != "itm"},
        optim=dataclasses.replace(shipped.optim, precision="fp32"),
    )
    # Keys added since, with the defaults that keep the old behaviour's meaning.
    assert cfg.to_dict() == {**OLD_DRY_RUN, "data": {**OLD_DRY_RUN["data"], "cache_decoded": "auto"}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-1"], "optim.lr must be > 0"),
        (["optim.lrr=1e-3"], "did you mean optim.lr"),
        (["optimizer.lr=1e-3"], r"unknown keys \['optimizer'\]; did you mean optim\?"),
        (["optim.precision=fp16"], "optim.precision must be 'fp32', 'bf16' or 'auto', got 'fp16'"),
        (["scaling.num_workers=0"], "scaling.num_workers must be > 0, got 0"),
        (["scaling.num_workers=true"], "scaling.num_workers must be an integer, got True"),
        (["scaling.resources_per_worker.CPU=-1"], "scaling.resources_per_worker.CPU must be >= 0"),
        (["optim.betas=[0.9]"], r"optim.betas\[1\] is required"),
        (["optim.betas=[0.9, 1.0]"], r"optim.betas\[1\] must be < 1"),
        (["optim.lr=fast"], "optim.lr must be a number, got 'fast'"),
        (["run.max_failures=-2"], "run.max_failures must be >= -1"),
        (["scaling.placement_strategy=EVERYWHERE"], "scaling.placement_strategy"),
        (["run.name=a/b"], "run.name: must be letters, digits"),
        (["validation.coarse_ks=[]"], "validation.coarse_ks must have at least 1 item"),
        (["data.synthetic=null"], "data: no training set"),
        (["data.train=/x.json"], "data.synthetic and data.train"),
        (["model.config=nope"], "unknown model config 'nope'"),
        (["model.overrides.low_dim=0"], "model: low_dim must be > 0"),
        (["loss.shortlist_k=1"], "shortlist_k"),
        (["loss.temperature=1"], "unknown LossConfig keys"),
        (["loss.queue_size=-1"], "queue_size"),
        (["loss.hard_negative_beta=-0.5"], "hard_negative_beta"),
        (["loss.itm_negatives=random"], "itm_negatives"),
        (["data.cache_decoded=sometimes"], "data.cache_decoded.bool must be true or false, got 'sometimes'"),
        (["data.cache_decoded=1"], "data.cache_decoded.bool must be true or false, got 1"),
        (["optim.lr"], "is not key=value"),
        (["optim.lr.x=1"], "not a section"),
    ],
)
def test_validation_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config("quickstart", overrides)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no shipped training config"):
        shipped_config("imagenet")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- list\n")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_config(bad)


def test_paths_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config("quickstart", ["run.work_dir=null", "run.name=abc"])
    assert cfg.run.resolved_work_dir == tmp_path / "runs" / "abc"
    assert cfg.run.resolved_storage_path == str(tmp_path / "runs" / "abc" / "ray_results")
    cfg = load_config("quickstart", ["run.storage_path=s3://bucket/x"])
    assert cfg.run.resolved_storage_path == "s3://bucket/x"
    assert is_uri("gs://b/c")
    assert not is_uri("/mnt/shared/x")


# -- the shipped configs -----------------------------------------------------------------------


def test_quickstart_is_a_cpu_run_on_two_workers() -> None:
    cfg = load_config(shipped_config("quickstart"))
    assert cfg.model.config == "tiny"
    assert cfg.data.synthetic is not None
    assert cfg.data.has_validation
    assert cfg.scaling.num_workers == 2
    assert not cfg.scaling.use_gpu
    assert cfg.optim.precision == "auto"  # bf16 where the CPU runs it natively, fp32 elsewhere: never refused
    # What learns on this CPU: lr <= 1e-3 *with* warm-up and clipping (1e-3 without warm-up collapsed).
    assert cfg.optim.lr <= 1e-3
    assert cfg.optim.warmup_steps >= 50
    assert cfg.optim.clip_norm == 1.0
    _, steps_per_epoch = plan_epoch(
        cfg.data.synthetic.train, world_size=2, batch_size=cfg.optim.batch_size, grad_accum_steps=1
    )
    assert 150 <= steps_per_epoch * cfg.optim.epochs <= 600  # a few minutes at ~1-2 steps/s


@pytest.mark.parametrize("name", ["flickr30k", "coco"])
def test_gpu_configs_are_multi_node_bf16_on_shared_storage(name: str) -> None:
    cfg = load_config(name)
    hivlp = cfg.model.resolve()  # parses the named config; no hub model is instantiated
    assert hivlp.image.pretrained
    assert hivlp.text.pretrained
    assert hivlp.text.name
    assert cfg.scaling.use_gpu
    assert cfg.scaling.num_workers >= 16
    assert cfg.scaling.worker_resources["GPU"] == 1
    assert cfg.optim.precision == "bf16"
    assert cfg.run.storage_path.startswith(SHARED_STORAGE)
    assert cfg.run.work_dir.startswith(SHARED_STORAGE)
    assert cfg.data.train.endswith(".json")
    assert cfg.data.train_split == "train"
    assert cfg.data.val_split == "val"
    assert cfg.data.has_validation
    assert cfg.run.num_to_keep >= 2
    assert cfg.run.max_failures >= 1
    assert cfg.loss_config().shortlist_k <= cfg.optim.batch_size * cfg.scaling.num_workers
    # The same file on CPU: only scaling and precision change.
    cpu = cfg.with_overrides(["scaling.use_gpu=false", "optim.precision=fp32", "scaling.resources_per_worker=null"])
    assert cpu.scaling.worker_resources == {"CPU": 1.0}


# -- pure helpers the loop relies on -----------------------------------------------------------


def test_lr_schedule_warms_up_then_decays() -> None:
    kw = {"warmup_steps": 10, "total_steps": 110, "min_lr_ratio": 0.1}
    factors = [lr_factor(s, **kw) for s in range(110)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(110, **kw) == pytest.approx(0.1)
    assert lr_factor(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_plan_epoch_matches_equal_split_and_drop_last() -> None:
    assert plan_epoch(1000, world_size=2, batch_size=64, grad_accum_steps=1) == (7, 7)
    assert plan_epoch(1000, world_size=2, batch_size=64, grad_accum_steps=3) == (7, 2)
    with pytest.raises(ConfigError, match="fewer than one optimizer step"):
        plan_epoch(100, world_size=2, batch_size=64, grad_accum_steps=1)


def test_decoded_cache_auto_caches_only_what_fits_half_of_the_object_store() -> None:
    quickstart = decoded_bytes(10_000, 64)
    assert quickstart == 10_000 * 3 * 64 * 64 * 4  # float32 pixels: 0.49 GB
    fits = {"num_images": 10_000, "image_size": 64, "object_store_bytes": 2 * quickstart}
    assert should_cache_decoded("auto", **fits)
    assert not should_cache_decoded("auto", **{**fits, "object_store_bytes": 2 * quickstart - 1})
    assert not should_cache_decoded("auto", **{**fits, "num_images": 10_001})
    # An explicit setting wins either way (a cluster without object store information included).
    assert should_cache_decoded(True, num_images=10**9, image_size=224, object_store_bytes=0)
    assert not should_cache_decoded(False, **fits)
    assert load_config("quickstart").data.cache_decoded == "auto"
    assert load_config("quickstart", ["data.cache_decoded=false"]).data.cache_decoded is False


def test_caption_choice_is_deterministic_per_epoch() -> None:
    import torch

    batch = {
        "uid": torch.tensor([11, 22, 33, 44]),
        "num_captions": torch.tensor([5, 1, 3, 5]),
        "input_ids": torch.arange(4 * 5 * 2).reshape(4, 5, 2),
        "attention_mask": torch.ones(4, 5, 2, dtype=torch.long),
    }
    ids0, _ = select_captions(batch, seed=0, epoch=0)
    again, _ = select_captions(batch, seed=0, epoch=0)
    assert torch.equal(ids0, again)
    chosen = (ids0[:, 0] - torch.arange(4) * 10) // 2
    assert chosen[1] == 0
    assert chosen[2] < 3
    draws = {tuple(select_captions(batch, seed=0, epoch=e)[0][:, 0].tolist()) for e in range(8)}
    assert len(draws) > 1  # another caption in another epoch
    assert shuffle_seed(0, 1, 0) != shuffle_seed(0, 2, 0) != shuffle_seed(0, 2, 1)


def test_flatten_eval_headline_is_the_widest_funnel() -> None:
    class Table:
        rows = {
            "low": {"AR": 0.5, "image_to_text_R@1": 0.3, "text_to_image_R@1": 0.2, "image_to_text_R@5": 0.9},
            "high": {"AR": 0.7},
            "hier@10": {"AR": 0.6, "shortlist_recall": 0.8},
            "hier@50": {"AR": 0.69},
        }

    metrics = flatten_eval(Table())
    assert metrics["val_AR"] == 0.69
    assert metrics["val_low_AR"] == 0.5
    assert metrics["val_high_AR"] == 0.7
    assert metrics["val_low_i2t_R@1"] == 0.3
    assert "val_low_i2t_R@5" not in metrics
    assert metrics["val_hier@10_shortlist_recall"] == 0.8


def test_training_state_round_trip_and_export(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    (ckpt / "text_tower").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "text_tower/config.json"):
        (ckpt / name).write_text("{}")
    state = TrainingState(
        step=7, epoch=1, micro_in_epoch=3, total_steps=20, samples_seen=224, world_size=2,
        global_batch=32, metrics={"val_AR": 0.5},
    )  # fmt: skip
    (ckpt / "training_state.json").write_text(state.to_json())
    (ckpt / "optimizer.pt").write_bytes(b"x")
    assert load_training_state(ckpt) == state
    out = export_model(ckpt, tmp_path / "model")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {"config.json", "model.safetensors", "tokenizer_config.json", "text_tower/config.json"}
    assert not names & set(TRAINING_FILES)


# -- the two command lines -------------------------------------------------------------------------


def test_both_command_lines_share_the_config_code(capsys: pytest.CaptureFixture[str]) -> None:
    from hivlp_milvus.cli import main as hivlp_main
    from training.__main__ import main as training_main

    assert hivlp_main(["train", "--config", "quickstart", "--dry-run", "optim.lr=1e-4"]) == 0
    via_cli = yaml.safe_load(capsys.readouterr().out)
    assert training_main(["--config", "quickstart", "--dry-run", "optim.lr=1e-4"]) == 0
    via_module = yaml.safe_load(capsys.readouterr().out)
    assert via_cli == via_module
    assert via_cli["optim"]["lr"] == pytest.approx(1e-4)
    assert TrainConfig.from_dict(via_cli) == load_config("quickstart", ["optim.lr=1e-4"])

    assert hivlp_main(["train", "--dry-run", "optim.lrr=1"]) == 2
    assert "did you mean optim.lr" in capsys.readouterr().err
    assert training_main(["--dry-run", "scaling.num_workers=0"]) == 2
    assert "scaling.num_workers" in capsys.readouterr().err


def test_an_image_tower_swap_is_another_model(tmp_path: Path) -> None:
    """The tiny config's ViT -> CNN change must not resume the old run (timm kwargs differ)."""
    from hivlp_milvus.model import create_model
    from training.trainer import INIT_MODEL_DIR, existing_run_model, model_differences, run_directory

    cfg = load_config("quickstart", [f"run.work_dir={tmp_path}"])
    tiny = cfg.model.resolve()
    vit = load_config(
        "quickstart",
        ['model.overrides.image={"name": "vit_tiny_patch16_224", "timm_kwargs": {"img_size": 64, "patch_size": 8}}'],
    ).model.resolve()
    assert model_differences(tiny, tiny) == []
    assert model_differences(vit, tiny) == ["image.name", "image.timm_kwargs"]

    assert existing_run_model(cfg) is None  # no run yet
    published = Path(run_directory(cfg)) / INIT_MODEL_DIR
    create_model("micro", texts=["a red circle"]).save_pretrained(published)
    assert existing_run_model(cfg) == create_model("micro", texts=["a red circle"]).config


def test_itm_without_a_fusion_block_is_refused_before_training() -> None:
    with pytest.raises(ConfigError, match=r"loss.itm=1 trains the fusion block, but model 'micro' has none"):
        load_config("quickstart", ["model.config=micro"])
    assert load_config("quickstart", ["model.config=micro", "loss.itm=0"]).loss["itm"] == 0
    assert load_config("quickstart").model.resolve().fusion is not None  # tiny carries the block itm trains


def test_negatives_options_load_from_dotted_overrides() -> None:
    cfg = load_config(
        "quickstart", ["loss.queue_size=256", "loss.hard_negative_beta=0.5", "loss.itm_negatives=hardest"]
    )
    loss = cfg.loss_config()
    assert (loss.queue_size, loss.hard_negative_beta, loss.itm_negatives) == (256, 0.5, "hardest")
    shipped = load_config("quickstart").loss_config()  # off unless asked: no time cost by default
    assert (shipped.queue_size, shipped.hard_negative_beta, shipped.itm_negatives) == (0, 0.0, "sampled")

"""Ingest options: validation, the Ray encoder-pool sizing, and the CLI flags that build them.

The sizing logic (``plan_encoders``) is pure: it is tested here on the resource dicts Ray reports,
for GPU clusters that do not exist on this machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cli_helpers import byo

from hivlp_milvus.commands import common
from hivlp_milvus.commands import ingest as ingest_command
from hivlp_milvus.connection import ConnectionOptions
from hivlp_milvus.errors import CollectionNotFoundError, ConfigError
from hivlp_milvus.ingest import IngestOptions, ingest
from hivlp_milvus.ingest.resources import EncoderPlan, plan_encoders

# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"write_batch_rows": 0}, "write_batch_rows"),
        ({"num_workers": 0}, "num_workers"),
        ({"device": "gpu"}, "device"),
        ({"expected_rows": -1}, "expected_rows"),
    ],
)
def test_out_of_range_options_are_config_errors_naming_the_option(tmp_path: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ingest(byo(3), uri=str(tmp_path / "t.db"), progress=False, **kwargs)
    # Refused before connecting: no database was created.
    assert not (tmp_path / "t.db").exists()


def test_options_are_one_frozen_value_that_refuses_unknown_keys() -> None:
    options = IngestOptions.build(batch_size=8, device="cuda:1")
    assert (options.batch_size, options.device, options.write_batch_rows) == (8, "cuda:1", None)
    with pytest.raises(ConfigError, match="batch_sise"):
        IngestOptions.build(batch_sise=8)
    with pytest.raises(Exception, match="frozen"):
        options.batch_size = 3  # type: ignore[misc]


def test_create_false_on_a_missing_collection_says_what_to_do(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    with pytest.raises(CollectionNotFoundError, match=r"'absent' does not exist .*create=False") as info:
        ingest(byo(3), uri=db, collection_name="absent", create=False, progress=False)
    assert "--no-create" in str(info.value)
    from hivlp_milvus.connection import connect

    assert "absent" not in connect(db).list_collections()


def test_connection_and_uri_are_one_or_the_other(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    report = ingest(byo(5), connection=ConnectionOptions(uri=db), collection_name="via_options", progress=False)
    assert report.inserted == 5
    from hivlp_milvus.collection import HierarchicalCollection

    assert HierarchicalCollection.open("via_options", uri=db).count() == 5
    with pytest.raises(ConfigError, match="not both"):
        ingest(byo(1), connection=ConnectionOptions(uri=db), uri=str(tmp_path / "other.db"), progress=False)
    with pytest.raises(ConfigError, match="not both"):
        ingest(byo(1), connection=ConnectionOptions(uri=db), token="root:Milvus", progress=False)


# ------------------------------------------------------------------ Ray encoder pool sizing


@pytest.mark.parametrize(
    ("free", "total", "kwargs", "plan"),
    [
        # Half a GPU free: one actor takes that half instead of asking for a whole one.
        ({"CPU": 8, "GPU": 0.5}, {"CPU": 8, "GPU": 1}, {}, EncoderPlan(actors=1, num_gpus=0.5)),
        # Two whole GPUs free: one actor per GPU.
        ({"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 4}, {}, EncoderPlan(actors=2, num_gpus=1.0)),
        # More workers asked than GPUs free: they share them.
        ({"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 2}, {"num_workers": 4}, EncoderPlan(4, 0.5)),
        # Explicit CPU encode on a GPU cluster asks for no GPU; CPU actors are half the free CPUs.
        ({"CPU": 6, "GPU": 0}, {"CPU": 8, "GPU": 1}, {"device": "cpu"}, EncoderPlan(3, 0.0)),
        ({"CPU": 4}, {"CPU": 4}, {}, EncoderPlan(2, 0.0)),  # auto without GPUs: CPU actors
    ],
)
def test_the_request_is_sized_from_what_is_free(free: dict, total: dict, kwargs: dict, plan: EncoderPlan) -> None:
    got = plan_encoders(free, total, **kwargs)
    assert (got, got.device) == (plan, "cuda" if plan.num_gpus else "cpu")


@pytest.mark.parametrize(
    ("free", "total", "device", "match"),
    [
        # The compose GPU box: one GPU, both Serve encoders hold 0.5 of it: an error, not a wait.
        ({"CPU": 8, "GPU": 0.0}, {"CPU": 8, "GPU": 1}, "auto", r"1 GPU\(s\) but none is free.*device='cpu'"),
        ({"CPU": 8}, {"CPU": 8, "GPU": 1}, "cuda", "none is free"),
        ({"CPU": 4}, {"CPU": 4}, "cuda", "has no GPU"),
        ({"CPU": 0.5}, {"CPU": 4}, "cpu", "no CPU is free"),
    ],
)
def test_a_request_that_cannot_be_placed_is_an_error(free: dict, total: dict, device: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plan_encoders(free, total, device=device)


@pytest.mark.parametrize("free", [0.01, 0.3, 0.5, 0.99, 1.0, 1.7, 3.0, 7.5])
@pytest.mark.parametrize("workers", [None, 1, 2, 3, 16])
def test_the_shares_never_exceed_the_free_gpus(free: float, workers: int | None) -> None:
    plan = plan_encoders({"CPU": 32, "GPU": free}, {"CPU": 32, "GPU": 8}, num_workers=workers)
    assert plan.num_gpus > 0
    assert plan.actors * plan.num_gpus <= free + 1e-9
    assert plan.num_gpus <= 1.0
    if workers is not None:  # as many actors as asked, unless the free GPU is too small to share
        assert plan.actors == min(workers, round(free * 100))


# ------------------------------------------------------------------ CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ingest_command.register(parser.add_subparsers())
    return parser.parse_args(["ingest", *argv])


def test_connection_flags_and_token_environment_become_connection_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVLP_MILVUS_TOKEN", "env:token")
    tls = ["--secure", "--server-pem-path", "ca.pem", "--server-name", "m.internal", "--ca-pem-path", "root.pem"]
    tls += ["--client-pem-path", "c.pem", "--client-key-path", "c.key"]
    args = _parse(["data", "--uri", "https://milvus:19530", "--db-name", "d1", *tls])
    assert common.connection_options(args) == ConnectionOptions(
        uri="https://milvus:19530",
        token="env:token",  # the environment keeps the token out of the process list
        db_name="d1",
        secure=True,
        server_pem_path="ca.pem",
        server_name="m.internal",
        ca_pem_path="root.pem",
        client_pem_path="c.pem",
        client_key_path="c.key",
    )
    # An explicit --token wins over the environment; no TLS flag means none is passed to pymilvus.
    plain = common.connection_options(_parse(["data", "--token", "root:Milvus"]))
    assert (plain.token, plain.tls()) == ("root:Milvus", {})
    monkeypatch.delenv("HIVLP_MILVUS_TOKEN")
    assert common.connection_options(_parse(["data"])).token is None


def test_cli_device_has_choices_and_new_flags_parse() -> None:
    args = _parse(["data", "--device", "cpu", "--profile", "lite:HNSW", "--image-root", "/imgs", "--num-workers", "2"])
    assert (args.device, args.profile, args.image_root, args.num_workers) == ("cpu", "lite:HNSW", Path("/imgs"), 2)
    with pytest.raises(SystemExit):
        _parse(["data", "--device", "tpu"])


@pytest.mark.parametrize(
    ("flag", "field"), [("--batch-size", "batch_size"), ("--write-batch-rows", "write_batch_rows")]
)
def test_cli_refuses_a_bad_batch_size_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, field: str
) -> None:
    from hivlp_milvus import cli

    assert cli.main(["ingest", str(tmp_path / "nothing-here"), "--uri", str(tmp_path / "t.db"), flag, "0"]) == 2
    err = capsys.readouterr().err
    # The option is named, and the source (which does not exist) was never read.
    assert field in err
    assert "does not exist" not in err

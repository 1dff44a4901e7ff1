"""The ``hivlp-milvus`` command: cheap to parse, and ``search`` finds the demo's outputs by itself.

Real micro model, real Milvus Lite (``tests/demo_layout.py``), the real entry point.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import enter_without_hivlp_env, search_json
from demo_layout import DemoLayout, build_demo_layout

from hivlp_milvus.cli import main

HEAVY = ("torch", "ray", "training", "benchmarks", "pymilvus", "transformers", "timm")
REPO = Path(__file__).resolve().parents[2]


def _imported_by(argv: list[str]) -> set[str]:
    """Top-level packages of HEAVY that running ``hivlp-milvus ARGV`` imports (in a fresh interpreter)."""
    code = (
        "import sys\n"
        "from hivlp_milvus.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('IMPORTED:', *sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, timeout=120
    )
    return set(out.stdout.strip().splitlines()[-1].split()[1:])


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"], ["bench", "--help"], ["train", "--help"]])
def test_help_imports_no_heavy_room(argv: list[str]) -> None:
    # `train --help` is the training parser's help: it imports training/__main__ (argparse only).
    allowed = {"training"} if argv[0] == "train" else set()
    assert _imported_by(argv) - allowed == set()


@pytest.mark.parametrize(
    ("package", "lazy_name"), [("hivlp_milvus", "HiVLP"), ("hivlp_milvus.model", "LossConfig"), ("training", "cli")]
)
def test_packages_export_lazy_names(package: str, lazy_name: str) -> None:
    module = importlib.import_module(package)
    assert lazy_name in dir(module)
    assert callable(getattr(module, lazy_name))
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nope'"):
        module.nope  # noqa: B018


def test_train_forwards_its_arguments_to_the_training_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", "quickstart", "--dry-run", "optim.epochs=7"]) == 0
    assert "epochs: 7" in capsys.readouterr().out


def test_unknown_arguments_of_other_commands_are_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["search", "x", "--no-such-flag"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoLayout:
    return build_demo_layout(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def in_demo_dir(demo: DemoLayout, monkeypatch: pytest.MonkeyPatch) -> DemoLayout:
    """The current directory is where `make demo` ran, and no HIVLP_* variable is set."""
    enter_without_hivlp_env(monkeypatch, demo.root)
    return demo


def test_search_after_the_demo_needs_no_other_argument(
    in_demo_dir: DemoLayout, capsys: pytest.CaptureFixture[str]
) -> None:
    query = "a small red circle"
    out = search_json([query, "--limit", "5"], capsys)
    from hivlp_milvus.collection import HierarchicalCollection

    collection = HierarchicalCollection.open("quickstart", uri=in_demo_dir.uri, model=in_demo_dir.model)
    reference = collection.hierarchical_search(query, limit=5)[0]
    assert {h["entity"]["modality"] for h in reference} == {"image"}  # a text query finds images
    assert [h["id"] for h in out["hits"]] == [h["id"] for h in reference]
    assert [h["distance"] for h in out["hits"]] == pytest.approx([h["distance"] for h in reference], abs=1e-5)
    # The CLI's text output too (what the README shows).
    assert main(["search", query, "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[-1].startswith("(3 hits;")


def test_search_single_level_equals_brute_force(in_demo_dir: DemoLayout, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    query = "two blue squares"
    out = search_json([query, "--level", "high", "--modality", "image", "--limit", "4"], capsys)
    q = in_demo_dir.model.embed_texts([query]).high[0]
    gallery = in_demo_dir.model.embed_images([r.image for r in in_demo_dir.records]).high
    scores = np.sort(gallery @ q)[::-1][:4]
    assert [h["distance"] for h in out["hits"]] == pytest.approx(scores.tolist(), abs=1e-4)
    assert {h["entity"]["modality"] for h in out["hits"]} == {"image"}


def test_environment_overrides_the_quickstart_defaults(
    in_demo_dir: DemoLayout, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HIVLP_COLLECTION", "not_there")
    assert main(["search", "a red circle"]) == 2
    assert "not_there" in capsys.readouterr().err
    # A flag wins over the environment.
    assert main(["search", "a red circle", "--collection", "quickstart", "--limit", "2"]) == 0


def test_search_outside_the_demo_dir_says_how_to_get_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    enter_without_hivlp_env(monkeypatch, tmp_path)
    assert main(["search", "a red circle"]) == 2
    err = capsys.readouterr().err
    assert "hivlp_work/model" in err
    assert "make demo" in err


def test_search_with_a_model_but_no_database_says_so(
    in_demo_dir: DemoLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.db"
    assert main(["search", "a red circle", "--uri", str(missing)]) == 2
    assert f"no Milvus Lite database at {missing}" in capsys.readouterr().err
    assert not missing.exists()  # searching never creates an empty database


def test_device_cuda_without_a_gpu_fails_with_the_reason(
    in_demo_dir: DemoLayout, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a usable GPU")
    assert main(["search", "a red circle", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "device 'cuda' cannot be used" in err
    assert "device='cpu'" in err
    assert main(["search", "a red circle", "--device", "auto", "--limit", "1"]) == 0

"""Every shell command and Python snippet in README.md, run where it can run here, so the README cannot drift.

The commands run against a tiny copy of what ``make demo`` leaves behind (``tests/demo_layout.py``:
``hivlp_work/{data,model,hivlp.db}``, collection ``quickstart``), from its directory, with no
``HIVLP_*`` variable set, exactly as typed (``.venv/bin/hivlp-milvus`` is the console script, i.e.
``hivlp_milvus.cli.main``). Placeholders (``DIR``, ``SOURCE``, ``NAME``) are filled in with the
demo's outputs. A command that cannot run here is listed in ``NOT_RUN`` with the reason; for those,
``hivlp-milvus COMMAND --help`` must still list every ``--flag`` the README uses. A README command
in neither list fails the test, so a new command gets a decision.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from demo_layout import DemoLayout, build_demo_layout

from hivlp_milvus.cli import main
from serving import AppArgs

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CLI_PREFIXES = (".venv/bin/hivlp-milvus ", "hivlp-milvus ")
PLACEHOLDERS = {"DIR": "hivlp_work/model", "SOURCE": "hivlp_work/data/test", "NAME": "readme"}

#: Commands (by their start) that are not run here, and why.
NOT_RUN = {
    "make demo": "the full quickstart (~10 min of Ray Train); tests/ray/test_quickstart.py runs it at a tiny size",
    "make test": "the test suite itself",
    "make serve": "starts Ray Serve (about a minute); tests/ray/test_serving.py serves the app over HTTP",
    "serve run serving:app": "starts Ray Serve; tests/ray/test_serving.py covers the app",
    "curl ": "needs the Serve app running (tests/ray/test_serving.py sends these requests)",
    "hivlp-milvus quickstart": "Ray Train, minutes; tests/ray/test_quickstart.py runs it at a tiny size",
    "hivlp-milvus bench": "minutes even with --smoke; tests/unit/test_benchmarks_smoke.py runs it",
}
#: Commands that run with an argument added, and why.
ADAPTED = {"hivlp-milvus train": ("--dry-run", "resolves the config and overrides without training (Ray Train)")}
#: Python blocks (by a line they contain) that are not run here, and why.
PYTHON_NOT_RUN = {'uri="http://gpu-box:19530"': "needs a Milvus server with GPU indexes"}


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def _commands() -> list[str]:
    """The shell commands of the README's bash blocks: comments dropped, continuations joined."""
    lines = [line for block in _blocks("bash") for line in block.replace("\\\n", " ").splitlines()]
    # The README's comments start with " # " (no argument it shows contains one).
    commands = [re.split(r"(?:^|\s)#\s", line, maxsplit=1)[0].strip() for line in lines]
    return [command for command in commands if command]


def _argv(command: str) -> list[str] | None:
    """``hivlp-milvus`` arguments of ``command`` (placeholders filled in), or None for another program."""
    for prefix in CLI_PREFIXES:
        if command.startswith(prefix):
            args = shlex.split(command[len(prefix) :], comments=True)
            return [PLACEHOLDERS.get(a, a) for a in args]
    return None


def _not_run_reason(command: str) -> str | None:
    plain = command.removeprefix(".venv/bin/")
    return next((why for start, why in NOT_RUN.items() if plain.startswith(start)), None)


def test_every_readme_command_is_run_or_explained() -> None:
    for command in _commands():
        assert _argv(command) is not None or _not_run_reason(command), (
            f"README command {command!r} is neither a hivlp-milvus command (run by this test) nor in NOT_RUN"
        )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoLayout:
    layout = build_demo_layout(tmp_path_factory.mktemp("readme"))
    # The own-data example: its manifest as the README prints it, and small images it names.
    from PIL import Image

    manifest = next(b for b in _blocks("csv") if b.startswith("id,image,caption"))
    data = layout.root / "my_data"
    (data / "images").mkdir(parents=True)
    (data / "manifest.csv").write_text(manifest, encoding="utf-8")
    for i, name in enumerate(sorted({line.split(",")[1] for line in manifest.splitlines()[1:]})):
        Image.new("RGB", (32, 32), (40 * i, 90, 200 - 40 * i)).save(data / name)
    return layout


@pytest.fixture
def in_demo_dir(demo: DemoLayout, monkeypatch: pytest.MonkeyPatch) -> DemoLayout:
    for name in [n for n in os.environ if n.startswith("HIVLP_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(demo.root)
    return demo


def _help(subcommand: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([subcommand, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_readme_commands_run_as_written(in_demo_dir: DemoLayout, capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[str] = []
    for command in _commands():
        argv = _argv(command)
        if argv is None:
            continue
        flags = [a.split("=")[0] for a in argv if a.startswith("--")]
        documented = _help(argv[0], capsys)
        unknown = [f for f in flags if f not in documented]
        assert not unknown, f"{command!r}: `hivlp-milvus {argv[0]} --help` lists no {unknown}"
        if _not_run_reason(command):
            continue
        extra, _why = ADAPTED.get(f"hivlp-milvus {argv[0]}", (None, None))
        if extra:
            argv = [*argv, extra]
        capsys.readouterr()
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, f"{command!r} exited {code}: {out.err[-2000:]}"
        if argv[0] == "search":
            assert re.search(r"^\(\d+ hits;", out.out, re.MULTILINE), f"{command!r} printed no hits:\n{out.out}"
            assert "(0 hits;" not in out.out, f"{command!r} found nothing:\n{out.out}"
        ran.append(argv[0])
    # What the README's follow-up promises: searches (demo, own data, placeholders), ingests, eval, train config.
    assert ran.count("search") >= 5
    assert {"ingest", "eval", "train"} <= set(ran)


@pytest.mark.slow  # the API snippet trains a tokenizer and ingests 1,200 rows: about a minute on 2 busy cores
def test_readme_python_snippets_run(tmp_path: Path) -> None:
    blocks = [b for b in _blocks("python") if not any(key in b for key in PYTHON_NOT_RUN)]
    assert blocks, "the README has no runnable Python snippet"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVLP_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for block in blocks:
        out = subprocess.run(
            [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, f"README snippet failed:\n{block}\n{out.stderr[-3000:]}"
        assert out.stdout.strip(), "the snippet prints its report and hits"


def test_make_demo_writes_where_the_commands_look() -> None:
    from hivlp_milvus.commands.common import DEFAULTS, QUICKSTART_WORK_DIR

    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "demo"], capture_output=True, text=True, timeout=60)
    assert f"hivlp-milvus quickstart --work-dir {QUICKSTART_WORK_DIR}" in dry.stdout, dry.stdout
    serve = subprocess.run(["make", "-n", "-C", str(ROOT), "serve"], capture_output=True, text=True, timeout=60)
    assert "serve run serving:app" in serve.stdout
    # serving:app falls back to the same layout as the CLI.
    for key in ("checkpoint", "milvus_uri", "collection"):
        assert AppArgs.model_fields[key].default == DEFAULTS[key], key

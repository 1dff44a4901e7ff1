"""Non-blank Python lines per room at a git revision and now, with the new features' code apart.

"The code is smaller than today for the same features" (issue 14) is only a fair comparison when
the modules of features added since the baseline are set apart: this prints, per room, the lines
at ``--rev``, the lines now (the working tree), the lines now in files that did not exist at
``--rev`` and belong to a listed new feature, and ``now - new features`` (the old features' code
now), then the feature files themselves. A feature file that already existed at ``--rev`` is
listed with both counts but never subtracted (its growth cannot be told apart from refactoring).

Usage::

    python tools/loc_by_room.py                      # against 5baa575, a Markdown table
    python tools/loc_by_room.py --rev HEAD~10 --repo /path/to/checkout
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
from pathlib import Path

ROOMS = ("hivlp_milvus", "training", "serving", "benchmarks", "tests")
BASELINE = "5baa575"
# Features added after the baseline, by the files that are theirs alone (source and tests).
NEW_FEATURES: dict[str, tuple[str, ...]] = {
    "fusion (third stage)": (
        "hivlp_milvus/fusion_stage.py",
        "hivlp_milvus/model/fusion.py",
        "tests/unit/test_fusion_*.py",
        "training/fusion_finetune.py",
        "serving/fusion.py",
        "tests/integration/test_fusion_server.py",
        "benchmarks/fusion.py",
        "benchmarks/report_fusion.py",
    ),
    "training negatives (hard-negative weighting, queue)": (
        "tests/unit/test_loss_negatives.py",
        "benchmarks/negatives.py",
        "benchmarks/report_negatives.py",
    ),
    "training precision (bf16 where native)": (
        "benchmarks/precision.py",
        "benchmarks/report_precision.py",
        "tests/unit/test_training_precision.py",
    ),
    "coarse request's output fields": ("benchmarks/coarse_fields.py", "benchmarks/report_coarse_fields.py"),
    "search plan choice": ("tests/unit/test_search_plan.py", "benchmarks/plan.py", "benchmarks/report_plan.py"),
    "load, batching, metrics, faults": (
        "serving/metrics.py",
        "serving/search_batcher.py",
        "benchmarks/load*.py",
        "benchmarks/report_load.py",
        "tests/ray/test_serving_load.py",
        "tests/ray/test_faults.py",
        "tests/unit/test_media_security.py",
        "tests/unit/test_content_limits.py",
        "tests/unit/test_fuzz_http.py",
    ),
    "emoji / npm data": (
        "hivlp_milvus/data/emoji*.py",
        "hivlp_milvus/data/npm.py",
        "tests/unit/test_emoji*.py",
        "benchmarks/emoji*.py",
        "benchmarks/report_emoji.py",
    ),
    "content resolver": ("hivlp_milvus/content.py", "tests/unit/test_content.py"),
    "device": ("hivlp_milvus/device.py", "tests/unit/test_device.py", "tests/unit/test_cli_device.py"),
    "connection options / TLS": (
        "hivlp_milvus/connection.py",
        "tests/unit/test_connection_options.py",
        "tests/unit/test_serving_connection.py",
    ),
}
# Code that was restructured since the baseline: the files then, the files now (same features).
GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ingest": (("hivlp_milvus/ingest.py", "hivlp_milvus/ingest_ray.py"), ("hivlp_milvus/ingest/*.py",)),
    "collection, schema, search, filters": (
        ("hivlp_milvus/collection.py", "hivlp_milvus/search.py", "hivlp_milvus/filters.py"),
        (
            "hivlp_milvus/collection.py",
            "hivlp_milvus/creation.py",
            "hivlp_milvus/index_state.py",
            "hivlp_milvus/schema.py",
            "hivlp_milvus/search.py",
            "hivlp_milvus/filters.py",
        ),
    ),
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def non_blank(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def lines_at(repo: Path, rev: str) -> dict[str, int]:
    """Non-blank lines of every ``*.py`` file of the rooms at ``rev``."""
    paths = [p for p in git(repo, "ls-tree", "-r", "--name-only", rev, "--", *ROOMS).splitlines() if p.endswith(".py")]
    return {p: non_blank(git(repo, "show", f"{rev}:{p}")) for p in paths}


def lines_now(repo: Path) -> dict[str, int]:
    """Non-blank lines of every tracked or new (not ignored) ``*.py`` file of the rooms in the working tree."""
    listed = git(repo, "ls-files", "--cached", "--others", "--exclude-standard", "--", *ROOMS).splitlines()
    return {
        p: non_blank((repo / p).read_text(encoding="utf-8"))
        for p in listed
        if p.endswith(".py") and (repo / p).is_file()
    }


def feature_of(path: str) -> str | None:
    """The new feature ``path`` belongs to, or ``None``."""
    for feature, patterns in NEW_FEATURES.items():
        if any(fnmatch.fnmatch(path, pattern) for pattern in patterns):
            return feature
    return None


def room_of(path: str) -> str:
    return path.split("/", 1)[0]


def report(then: dict[str, int], now: dict[str, int], rev: str) -> str:
    """The Markdown tables: per room, then the new features' files."""
    new_feature = {p: n for p, n in now.items() if p not in then and feature_of(p)}
    out = [
        f"| room | {rev} | now | new-feature files now | old features now | change, old features |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    totals = [0, 0, 0]
    for room in ROOMS:
        before = sum(n for p, n in then.items() if room_of(p) == room)
        after = sum(n for p, n in now.items() if room_of(p) == room)
        feature = sum(n for p, n in new_feature.items() if room_of(p) == room)
        totals = [totals[0] + before, totals[1] + after, totals[2] + feature]
        out.append(_row(room, before, after, feature))
    out.append(_row("**all**", *totals))
    out += ["", f"| feature | file | {rev} | now |", "|---|---|---:|---:|"]
    for path in sorted(set(now) | set(then), key=lambda p: (feature_of(p) or "", p)):
        if feature_of(path):
            was = str(then[path]) if path in then else "—"
            note = "" if path not in then else " (existed: not subtracted)"
            out.append(f"| {feature_of(path)} | `{path}`{note} | {was} | {now.get(path, 0)} |")
    out += ["", f"| restructured code | files now | {rev} | now |", "|---|---|---:|---:|"]
    for group, (old, new) in GROUPS.items():
        before = sum(n for p, n in then.items() if any(fnmatch.fnmatch(p, pat) for pat in old))
        after = sum(n for p, n in now.items() if any(fnmatch.fnmatch(p, pat) for pat in new))
        out.append(f"| {group} | {', '.join(f'`{p}`' for p in new)} | {before:,} | {after:,} ({after - before:+,}) |")
    return "\n".join(out)


def _row(room: str, before: int, after: int, feature: int) -> str:
    old_now = after - feature
    change = (old_now - before) / before if before else 0.0
    return f"| {room} | {before:,} | {after:,} | {feature:,} | {old_now:,} | {old_now - before:+,} ({change:+.0%}) |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rev", default=BASELINE, help=f"the git revision to compare with (default {BASELINE})")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="the checkout")
    args = parser.parse_args(argv)
    print(report(lines_at(args.repo, args.rev), lines_now(args.repo), args.rev))


if __name__ == "__main__":
    main()

"""Non-blank Python lines per room, each line credited by ``git blame`` to the issue that wrote it.

``loc_by_room.py`` sets apart the files of features added since the baseline, but a feature that
grew inside an old file (the fusion stage in ``search.py``, the load knobs in ``serving/app.py``)
stays counted as old code there. This tool asks ``git blame -w -M -C -C`` who wrote each line of
the other files at ``HEAD``: a line older than the baseline is the baseline's; a line written since
is credited to the issue of its commit (the branch it was merged from, or the table below for
commits made on main). "Old features now" is then the baseline's surviving lines plus the lines
the #14 redesign wrote (and any commit not classified, which is counted against #14), compared
with the baseline's lines: issue 14's "smaller than today for the same features".

Blame follows code moved or copied between files (``-C -C``), so a function moved by the redesign
stays credited to whoever wrote it. A baseline line that a later feature rewrote is counted as that
feature's, which favours the redesign; a feature's line the redesign rewrote is counted as the
redesign's, which goes against it.

Usage::

    python tools/loc_by_issue.py                 # against 5baa575, a Markdown table
    python tools/loc_by_issue.py --unit statements  # AST statements (by their first line), not lines
    python tools/loc_by_issue.py --unit code     # lines of code: no blank, comment-only or docstring lines
    python tools/loc_by_issue.py --commits       # also the lines each commit still owns
"""

from __future__ import annotations

import argparse
import ast
import collections
from pathlib import Path

from count_statements import code_lines, is_statement, statements
from loc_by_room import BASELINE, ROOMS, feature_of, git, lines_at, room_of

REDESIGN = "#14"
# Branches merged into main since the baseline, by the issue they worked on.
BRANCH_ISSUE = {
    "confighttp": "#14",
    "ingest": "#14",
    "core": "#14",
    "searchtests": "#15",
    "suitetiming": "#15",
    "emoji": "#13",
    "fusion": "#12",
    "fusionpath": "#12",
    "fusionserve": "#12",
    "fusionquality": "#12",
    "negatives": "#12",
    "emojifusion": "#12",
    "qsfast": "#12",
    "qs12": "#12",
    "plan": "#17",
    "loadbench": "#17",
    "faults": "#17",
    "ingress17": "#17",
}
# Commits whose issue is not their branch's: made on main, or on a branch that served several
# issues (servingfix). A commit of main not listed here is counted as the redesign's.
COMMIT_ISSUE = {
    # servingfix
    "38ca98e": "#14",  # http_errors leaves ingress.py
    "cb8a54c": "#14",  # ingress maps errors by type
    "c4cfb60": "#17",  # RELIABILITY docs
    "81d226f": "#17",  # schema fix found by the fuzzer
    "2699bc5": "#17",  # OpenAPI fuzzer
    "db6f81b": "#17",  # in-process app for the fuzzer
    "ebcaa09": "#16",  # encoders refuse an unusable GPU
    "a2ffc5f": "#16",  # Serve app TLS arguments
    "56028a1": "#15",
    "01bd41f": "#15",
    "98370ee": "#15",
    "24a41b7": "#15",
    "63dcebb": "#15",
    # main
    "68adbbd": "#16",  # README commands run as written
    "0bd08b4": "#16",  # docs and deploy
    "88a2c72": "#16",  # GPUs held by another Ray job
    "7ba8058": "#16",  # token out of ConnectionOptions' repr
    "967459a": "#16",
    "e921841": "#16",  # CLI TLS flags reach ConnectionOptions
    "90c810e": "#17",  # plan and coarse_limit in HTTP results
    "b7711fa": "#17",  # min_encoder_replicas
    "522b64e": "#17",
    "ae0eef5": "#17",  # /media non-ASCII ids, chunked body limit
    "10143df": "#17",  # the 504 names its limit
    "a461500": "#17",  # plan choice through Serve
    "27e25fc": "#17",  # Searcher.ping checks the collection
    "7c24fe5": "#17",
    "a5480f0": "#17",
    "80c52ef": "#17",
    "b2be0da": "#13",  # /media transparency for emoji
    "9314e17": "#13",
    "53804d4": "#12",  # itm needs a fusion block
    "55c44cd": "#12",
    "341476f": "#12",
    "123971a": "#12",
    "a0a6ab2": "#12",
    "5a90b78": "#12",  # the coarse request's output fields (found for #12's ten minutes)
    "ab8b2de": "#12",
    "8ad7dd3": "#12",
}


def branch_of_commits(repo: Path, rev: str) -> dict[str, str]:
    """Short hash -> branch name, for every commit merged from a branch into main since ``rev``."""
    merges = git(repo, "log", "--merges", "--first-parent", "--format=%H %s", f"{rev}..HEAD").splitlines()
    branch_of = {}
    for line in merges:
        merge, subject = line.split(" ", 1)
        name = subject.removeprefix("Merge branch ").strip("'")
        for commit in git(repo, "rev-list", f"{merge}^1..{merge}^2").split():
            branch_of[commit[:7]] = name
    return branch_of


def issue_of(commit: str, branch_of: dict[str, str]) -> str:
    """The issue a commit (short hash) worked on; the redesign's when nothing says otherwise."""
    if commit in COMMIT_ISSUE:
        return COMMIT_ISSUE[commit]
    return BRANCH_ISSUE.get(branch_of.get(commit, ""), REDESIGN)


def blame(repo: Path, rev: str, path: str) -> dict[int, str]:
    """The short hash that wrote each line of ``path`` at HEAD (``"baseline"`` if older), by line number."""
    porcelain = git(repo, "blame", "-w", "-M", "-C", "-C", "--line-porcelain", f"{rev}..HEAD", "--", path)
    owner_of: dict[int, str] = {}
    boundary, commit, line_no = set(), "", 0
    for line in porcelain.splitlines():
        fields = line.split(" ")
        if len(fields[0]) == 40 and all(c in "0123456789abcdef" for c in fields[0]):
            commit, line_no = fields[0], int(fields[2])
        elif line == "boundary":
            boundary.add(commit)
        elif line.startswith("\t") and line[1:].strip():
            owner_of[line_no] = "baseline" if commit in boundary else commit[:7]
    return owner_of


def owners(repo: Path, rev: str, path: str, unit: str) -> collections.Counter[str]:
    """Non-blank lines (``unit="lines"``), code lines or statements (by their first line) of ``path`` per owner."""
    owner_of = blame(repo, rev, path)
    if unit == "lines":
        return collections.Counter(owner_of.values())
    if unit == "code":
        return collections.Counter(owner_of[line] for line in code_lines(git(repo, "show", f"HEAD:{path}")))
    tree = ast.parse(git(repo, "show", f"HEAD:{path}"))
    return collections.Counter(owner_of[node.lineno] for node in ast.walk(tree) if is_statement(node))


def head_files(repo: Path) -> list[str]:
    listed = git(repo, "ls-tree", "-r", "--name-only", "HEAD", "--", *ROOMS).splitlines()
    return [p for p in listed if p.endswith(".py")]


def report(repo: Path, rev: str, unit: str, show_commits: bool) -> str:
    if unit == "lines":
        then = lines_at(repo, rev)
    elif unit == "code":
        then = {p: len(code_lines(git(repo, "show", f"{rev}:{p}"))) for p in lines_at(repo, rev)}
    else:
        then = {p: statements(git(repo, "show", f"{rev}:{p}")) for p in lines_at(repo, rev)}
    branch_of = branch_of_commits(repo, rev)
    table: dict[str, collections.Counter[str]] = {room: collections.Counter() for room in ROOMS}
    per_commit: collections.Counter[str] = collections.Counter()
    for path in head_files(repo):
        counted = owners(repo, rev, path, unit)
        room = table[room_of(path)]
        if path not in then and feature_of(path):
            room["new-feature files"] += sum(counted.values())
            continue
        for owner, n in counted.items():
            room["baseline" if owner == "baseline" else issue_of(owner, branch_of)] += n
            per_commit[owner] += n
    issues = sorted({k for c in table.values() for k in c} - {"baseline", "new-feature files", REDESIGN})
    head = ["room", rev, f"baseline {unit} left", f"written by {REDESIGN}", *[f"by {i}" for i in issues]]
    out = [
        "| " + " | ".join([*head, "new-feature files", "old features now", "change"]) + " |",
        "|---" + "|---:" * (len(head) + 2) + "|",
    ]
    for room, credited in table.items():
        before = sum(n for p, n in then.items() if room_of(p) == room)
        old_now = credited["baseline"] + credited[REDESIGN]
        cells = [room, f"{before:,}", f"{credited['baseline']:,}", f"{credited[REDESIGN]:,}"]
        cells += [f"{credited[i]:,}" for i in issues]
        change = f"{old_now - before:+,} ({(old_now - before) / before:+.1%})" if before else "—"
        cells += [f"{credited['new-feature files']:,}", f"{old_now:,}", change]
        out.append("| " + " | ".join(cells) + " |")
    if show_commits:
        out += ["", f"| commit | issue | {unit} at HEAD |", "|---|---|---:|"]
        for commit, n in per_commit.most_common():
            if commit != "baseline":
                out.append(f"| {commit} | {issue_of(commit, branch_of)} | {n} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rev", default=BASELINE, help=f"the baseline revision (default {BASELINE})")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="the checkout")
    parser.add_argument("--unit", choices=("lines", "code", "statements"), default="lines", help="what to count")
    parser.add_argument("--commits", action="store_true", help="also list what each commit still owns")
    args = parser.parse_args(argv)
    print(report(args.repo, args.rev, args.unit, args.commits))


if __name__ == "__main__":
    main()

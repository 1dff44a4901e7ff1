"""Statements and non-blank lines of Python files, at a git revision and in the working tree.

Non-blank lines move with docstrings, comments and formatting; the number of statements (AST
``stmt`` nodes, docstrings not counted) moves only with code. Issue 14's "smaller for the same
features" is reported in both.

Usage::

    python tools/count_statements.py hivlp_milvus/ingest/*.py             # working tree
    python tools/count_statements.py --rev 5baa575 hivlp_milvus/ingest.py  # at a revision
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path


def is_statement(node: ast.AST) -> bool:
    """Whether ``node`` is a statement other than a docstring (a bare string expression)."""
    if not isinstance(node, ast.stmt):
        return False
    is_string = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    return not (is_string and isinstance(node.value.value, str))


def statements(source: str) -> int:
    """AST statements of ``source``, docstrings not counted."""
    return sum(is_statement(node) for node in ast.walk(ast.parse(source)))


def non_blank(source: str) -> int:
    return sum(1 for line in source.splitlines() if line.strip())


def source_of(path: str, rev: str | None, repo: Path) -> str:
    if rev is None:
        return (repo / path).read_text(encoding="utf-8")
    show = ["git", "-C", str(repo), "show", f"{rev}:{path}"]
    return subprocess.run(show, check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--rev", help="a git revision (default: the working tree)")
    parser.add_argument("--repo", type=Path, default=Path("."))
    args = parser.parse_args()
    total = [0, 0]
    for path in args.paths:
        source = source_of(path, args.rev, args.repo)
        counts = statements(source), non_blank(source)
        total = [total[0] + counts[0], total[1] + counts[1]]
        print(f"{counts[0]:6d} {counts[1]:6d}  {path}")
    print(f"{total[0]:6d} {total[1]:6d}  total (statements, non-blank lines)")


if __name__ == "__main__":
    main()

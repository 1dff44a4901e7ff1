"""Statements, code lines and non-blank lines of Python files, at a git revision and in the working tree.

Non-blank lines move with docstrings, comments and formatting; code lines (non-blank lines that
hold something other than a comment or a docstring) move with code and formatting; the number of
statements (AST ``stmt`` nodes, docstrings not counted) moves only with code. Issue 14's "smaller
for the same features" is reported in all three.

Usage::

    python tools/count_statements.py hivlp_milvus/ingest/*.py             # working tree
    python tools/count_statements.py --rev 5baa575 hivlp_milvus/ingest.py  # at a revision
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import tokenize
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


# Tokens that are not code on their own: a line holding only these is blank or a comment.
_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def code_lines(source: str) -> set[int]:
    """Line numbers of ``source`` holding code: not blank, not only a comment, not part of a docstring."""
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _NOT_CODE:
            lines.update(range(token.start[0], token.end[0] + 1))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.stmt) and not is_statement(node):  # a docstring (bare string)
            lines.difference_update(range(node.lineno, node.end_lineno + 1))
    # A blank line inside a multi-line string is part of a token but not a line of code.
    blank = {number for number, line in enumerate(source.splitlines(), 1) if not line.strip()}
    return lines - blank


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
    total = [0, 0, 0]
    for path in args.paths:
        source = source_of(path, args.rev, args.repo)
        counts = statements(source), len(code_lines(source)), non_blank(source)
        total = [t + c for t, c in zip(total, counts, strict=True)]
        print(f"{counts[0]:6d} {counts[1]:6d} {counts[2]:6d}  {path}")
    print(f"{total[0]:6d} {total[1]:6d} {total[2]:6d}  total (statements, code lines, non-blank lines)")


if __name__ == "__main__":
    main()

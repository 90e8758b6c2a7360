"""Markdown tables, the form every benchmark prints its figures in (and docs/ quotes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table with one header row; every cell already formatted by the caller."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)

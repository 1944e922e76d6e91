"""Errors and outputs of other code turned into the one-line reasons this project
prints: every layer names a failed file or step in one line, with the cause cut short."""
from __future__ import annotations


def one_line(text: str, limit: int = 500) -> str:
    """``text`` with tabs and line breaks made spaces, cut to ``limit`` characters."""
    flat = ' '.join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + '...'


def error_line(err: BaseException, limit: int = 200) -> str:
    """The first non-blank line of ``err``'s message (its type's name when it has
    none), flattened and cut to ``limit`` characters: a cause to put after a colon."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return one_line(lines[0] if lines else type(err).__name__, limit)

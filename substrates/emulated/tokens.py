"""Token counts and streamed pieces of a text, by the usual 4-characters-per-token estimate."""

from __future__ import annotations

import math

__all__ = ["count_tokens", "split_tokens"]


def count_tokens(text: str) -> int:
    """Tokens in ``text`` by the usual 4-characters-per-token estimate (at least 1 if non-empty).

    Example:
        >>> count_tokens("twelve chars")
        3
    """
    return math.ceil(len(text) / 4) if text else 0


def split_tokens(text: str, tokens: int) -> list[str]:
    """Split ``text`` into ``tokens`` consecutive pieces that join back to it (for streaming).

    Example:
        >>> split_tokens("abcdefgh", 3)
        ['abc', 'def', 'gh']
    """
    if tokens <= 1 or not text:
        return [text]
    size = math.ceil(len(text) / tokens)
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    while len(pieces) < tokens:
        pieces.append("")
    return pieces

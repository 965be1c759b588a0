"""Small wording helpers shared by the commands' human-readable output."""

from __future__ import annotations


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`1 epoch`, `2 epochs`, `1,000 samples`: the count with its noun in the right number."""
    word = noun if count == 1 else plural_form or f"{noun}s"
    return f"{count:,} {word}"

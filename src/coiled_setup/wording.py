"""Small wording helpers, so a count of one never reads "1 permissions", nor a list "A and B and C"."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def listing(items) -> str:
    """"A", "A and B", "A, B and C"."""
    items = list(items)
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)

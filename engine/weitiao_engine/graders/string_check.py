"""`string_check`: 1.0 or 0.0 from comparing two filled-in strings (OpenAI's eq, ne, like, ilike)."""

from __future__ import annotations


def string_check(operation: str, input: str, reference: str) -> float:
    """eq/ne: exact, case-sensitive; like: `input` contains `reference`; ilike: contains, ignoring case.

    >>> string_check("ilike", "这条评论是好评。OK", "ok")
    1.0
    """
    if operation == "eq":
        return float(input == reference)
    if operation == "ne":
        return float(input != reference)
    if operation == "like":
        return float(reference in input)
    if operation == "ilike":
        return float(reference.casefold() in input.casefold())
    raise ValueError(f"unknown string_check operation {operation!r}")

"""Small text helpers for user-facing messages: closest-name suggestions and value rendering."""

from __future__ import annotations

import difflib
from typing import Any, Iterable


def closest(name: str, candidates: Iterable[str], cutoff: float = 0.5) -> str | None:
    """The candidate most similar to ``name`` (difflib ratio >= ``cutoff``), or ``None``."""
    matches = difflib.get_close_matches(str(name), sorted(set(candidates)), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def suggest(name: str, candidates: Iterable[str], what: str = "name") -> str:
    """A fix hint: "did you mean 'x'?" when one is close, and always the valid choices.

    >>> suggest("lgn", ["lgm", "instantmesh"], "reconstructor")
    "did you mean 'lgm'? valid reconstructor names: instantmesh, lgm"
    """
    names = sorted(set(candidates))
    if not names:
        return f"no {what} is available"
    best = closest(name, names)
    listing = f"valid {what} names: {', '.join(names)}"
    return f"did you mean '{best}'? {listing}" if best else listing


def show_value(value: Any, limit: int = 80) -> str:
    """A value as a user would write it in YAML, shortened to ``limit`` characters."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

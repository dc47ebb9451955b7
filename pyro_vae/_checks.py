"""Argument checks shared by the whole library: one place for "must be a positive
integer" and its siblings, each raising a :class:`ValueError` that names the argument."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_count", "check_latent_dim", "check_number"]


def check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    minimum: float | None = None,
    positive: bool = False,
) -> Any:
    """Return ``value`` if it is a finite number (an ``int`` when ``integer``) that is
    ``>= minimum`` and, with ``positive``, ``> 0``; else raise :class:`ValueError`.

    Booleans are refused: ``True`` is not a count.
    """
    kind = "an integer" if integer else "a number"
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {kind} >= {minimum:g}, got {value!r}.")
    if positive and not value > 0:
        raise ValueError(f"{name} must be {kind} > 0, got {value!r}.")
    return value


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ``>= minimum``; else raise :class:`ValueError`."""
    return check_number(name, value, integer=True, minimum=minimum)


def check_latent_dim(latent_dim: Any, minimum: int = 1) -> int:
    """Return ``latent_dim`` if it is an integer ``>= minimum``, else raise a
    :class:`ValueError` with an example."""
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < minimum:
        raise ValueError(
            f"latent_dim must be an integer >= {minimum}, got {latent_dim!r}; "
            "pass e.g. latent_dim=20."
        )
    return latent_dim

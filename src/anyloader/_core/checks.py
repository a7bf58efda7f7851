"""Argument checks every floor uses: the ``TypeError``/``ValueError`` we promise for bad input.

Each names the argument, the bad value and what would be valid. Imports
nothing of anyloader's, so any module may use it.
"""

from __future__ import annotations

__all__ = ["choice", "non_negative_int", "positive_int"]


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1.

    Raises:
        TypeError: not an int (``bool`` is not accepted as an int).
        ValueError: < 1.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def non_negative_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 0.

    Raises:
        TypeError: not an int (``bool`` is not accepted as an int).
        ValueError: < 0.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a non-negative int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return value


def choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``.

    Raises:
        TypeError: if ``value`` is not a string.
        ValueError: naming the bad value and the valid choices.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {choices}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value

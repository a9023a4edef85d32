"""Argument types shared by the ``peerkit`` subcommands: numbers that must be positive.

One job: argparse ``type=`` callables that turn a word into a number or refuse it with a
message (argparse prints it as a usage error, exit 2). Used by ``cli.py`` (``peerkit check``'s
bounds) and ``operator.py`` (``--timeout``).

May import: the standard library only.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_float", "positive_int"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0; nan, inf and anything <= 0 are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value

"""Hypothesis profiles for the conformance tests: ``ci`` (the default, bounded) and
``thorough`` (``PEERKIT_HYPOTHESIS_PROFILE=thorough``). The example database stays on (its default
directory, ``.hypothesis/``), so a failure found once is replayed first next time.

Also: every conformance test runs with the ``peerkit`` loggers quiet.

May import: the standard library, pytest, hypothesis and ``peerkit.conformance``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from peerkit.conformance.profiles import register_profiles

register_profiles()
settings.load_profile(os.environ.get("PEERKIT_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """The servers log every retry; thousands of examples would flood the captured output."""
    logger = logging.getLogger("peerkit")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(old)

__all__ = ["HealthCheck"]

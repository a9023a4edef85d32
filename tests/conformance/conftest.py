"""Hypothesis profiles for the conformance tests: ``ci`` (the default, bounded) and
``thorough`` (``PEERKIT_HYPOTHESIS_PROFILE=thorough``). The example database stays on (its default
directory, ``.hypothesis/``), so a failure found once is replayed first next time.

May import: the standard library, hypothesis and ``peerkit.conformance``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from peerkit.conformance.profiles import register_profiles

register_profiles()
settings.load_profile(os.environ.get("PEERKIT_HYPOTHESIS_PROFILE", "ci"))

__all__ = ["HealthCheck"]

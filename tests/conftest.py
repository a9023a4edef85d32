"""Settings for the whole test run.

`peerkit check` searches with one process per core unless told otherwise; the tests that run it
(in this process or as a subprocess) keep the one-process search they were written and timed
with. tests/checker/test_parallel.py and the `--workers` tests in tests/test_cli.py ask for
several workers explicitly.
"""

import os

os.environ.setdefault("PEERKIT_WORKERS", "1")

"""The model configurations the conformance kit holds implementations to.

One job: name them in one place, in a module without Hypothesis, so that the in-process driver
(``stateful``, which needs Hypothesis) and the suite against running servers (``remote``) share
one set of budgets. May import: the standard library and ``peerkit.model``.
"""

from __future__ import annotations

from dataclasses import replace

from peerkit.model.config import Config

#: the model configuration the in-process driver runs against: from no peering (the driver
#: establishes in ``setup``), budgets large enough for a few lifecycles per example
CONFORMANCE_CONFIG = Config(
    "conformance",
    start="empty",
    tokens=2,
    establishes=2,
    deletes=2,
    cleanups=2,
    churn=4,
    faults=2,
    failovers=2,
    python_server_eof_first=False,
    description="the conformance driver's budgets: 2 peerings in turn, 2 deletes, 2 cleanups, "
    "4 churn, 2 resets, 2 failovers",
)

#: the in-process driver with store-write failures (finding F6): ``machine_for`` gives its
#: machine the ``write_fault`` rule; the same budgets otherwise (2 faults: resets and failed
#: writes share them)
WRITE_FAULTS_CONFIG = replace(
    CONFORMANCE_CONFIG,
    name="conformance-write-faults",
    write_faults=True,
    description=CONFORMANCE_CONFIG.description + "; a fault may be a failed store write of a "
    "stream handler or of the deletion routine",
)

#: the in-process driver with heartbeat timeouts: ``machine_for`` gives its machine the
#: ``heartbeat_timeout`` rule and the servers a finite heartbeat timeout
HEARTBEAT_FAULTS_CONFIG = replace(
    CONFORMANCE_CONFIG,
    name="conformance-heartbeat-faults",
    heartbeat_faults=True,
    description=CONFORMANCE_CONFIG.description + "; a fault may be a handler's heartbeat "
    "timeout",
)

#: the model the remote scenarios are held to: the same budgets (the resets and failovers are
#: caused through the optional test hooks); a Python gRPC server may see a cancel first as EOF
REMOTE_CONFIG = replace(
    CONFORMANCE_CONFIG,
    name="remote",
    python_server_eof_first=True,
    description="the remote conformance suite: 2 peerings in turn, 2 deletes, 2 cleanups, "
    "4 churn, 2 resets and 2 failovers (through the test hooks)",
)

"""Why rows stay PENDING or FAILING after churn with no fault (issue 8, item 8; finding F7).

A dialer first dials in a sync pass, and sync passes are paced (upstream's loop limiter: a burst
of 5, then 0.2 per second), so under churn a new dialer row waits up to 5 s for its first dial.
A peering deleted in that window is never announced: deleted by the dialer, the acceptor's row
stays PENDING for good (nothing ever dials it; the model calls that settled and clean, since the
pair was never linked); deleted by the acceptor and removed by its routine, the dialer's dials
are refused as unknown and it stays FAILING for good (finding F1). Deleted after the first dial,
both end clean. These tests pin that behaviour: it is the protocol's (specs/findings.md, F7).

The sync burst is set to 1 so that the window opens with one change instead of five; virtual
time on the in-memory network.

May import: pytest, trio, peerkit.impl (codec, testing, transport), peerkit.model.vocabulary.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from peerkit.impl.codec import METHOD_STREAM_RESOURCES
from peerkit.impl.testing import let_time_pass, two_clusters
from peerkit.impl.transport import MemoryNetwork
from peerkit.model.vocabulary import PeeringState

SETTLE = 700.0  # virtual: past every backoff (256 s)


def dials(net: MemoryNetwork) -> int:
    return sum(1 for c in net.streams if c.method == METHOD_STREAM_RESOURCES)


@pytest.mark.parametrize(("deleter", "delay", "other_ends"), [
    # the dialer deletes before the paced first dial: nothing ever dials, never told
    ("dc2", 2.0, PeeringState.PENDING),
    ("dc2", 10.0, PeeringState.TERMINATED),  # after it: told over the stream
    # the acceptor's row is gone before the first dial: refused as unknown for ever (F1)
    ("dc1", 0.0, PeeringState.FAILING),
    ("dc1", 10.0, PeeringState.TERMINATED),
])
async def test_a_peering_deleted_before_the_first_dial_is_never_announced(
    autojump_clock: trio.testing.MockClock, deleter: str, delay: float,
    other_ends: PeeringState,
) -> None:
    net = MemoryNetwork()
    async with two_clusters(net, sync_burst=1) as (dc1, dc2):
        await let_time_pass(1)  # dc2's first pass (at start) spent the burst
        token = await dc1.client.generate_token("dc2")
        await dc2.client.establish("dc1", token)
        await let_time_pass(delay)
        gone, other = (dc1, dc2) if deleter == "dc1" else (dc2, dc1)
        await gone.client.peering_delete(other.name)
        await let_time_pass(SETTLE)
        assert gone.row(other.name) is None
        assert other.state(gone.name) is other_ends
        calls = dials(net)
        if other_ends is PeeringState.PENDING:
            assert calls == 0  # no stream was ever opened
        elif other_ends is PeeringState.FAILING:
            assert calls > 1  # refused as unknown, again and again
            await let_time_pass(SETTLE)
            assert dials(net) > calls  # for ever

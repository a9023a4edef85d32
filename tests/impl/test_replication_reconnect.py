"""Finding F4 in the implementation: a service the exporter stopped exporting while the stream was
down must not survive the reconnect on the importer. The exporter's exported-service list, sent
when a stream starts, is what removes it (without it the importer keeps 'api' for good; the model
shows the same with `NoServiceList` in tests/model/test_properties.py)."""

from __future__ import annotations

import trio
import trio.testing

from peerkit.impl.testing import eventually, memory_call, peer, two_clusters
from peerkit.impl.transport import MemoryNetwork


async def test_unexport_while_disconnected_is_applied_on_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    with trio.fail_after(600):  # virtual seconds: a missing list fails here instead of hanging
        await _scenario(net)


async def _scenario(net: MemoryNetwork) -> None:
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        assert dc2.imported("dc1") == ["api", "web"]
        memory_call(net).reset()  # the stream goes down without Terminated
        await eventually(lambda: not dc1.connected("dc2"), dc1)
        await dc1.client.unexport_service("api", "dc2")  # nobody to tell right now
        calls = len(net.streams)
        # the dialer reconnects after its backoff; the new stream carries the service list
        await eventually(lambda: len(net.streams) > calls and dc2.connected("dc1")
                         and dc2.imported("dc1") == ["web"], dc1, dc2)
        assert dc2.imported("dc1") == ["web"]

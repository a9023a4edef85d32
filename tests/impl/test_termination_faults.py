"""A connection reset in the middle of termination, in both directions (issue 8, "Faults").

`Terminated` is queued but held on the network when the connection is reset, so it is lost
with everything else in flight. What happens next is what the model says (specs/findings.md, F2):

* the **acceptor** deleted: the dialer reconnects, and while the acceptor's row is still being
  deleted its answer to a dial of a deleted peering (#14285) is `Terminated`: the dialer ends
  TERMINATED and both sides clean up;
* the **dialer** deleted: a dialer never dials a peering it deleted, and the acceptor never dials,
  so the acceptor is never told: it keeps an active row that reads FAILING. This is F2's first
  window, which no upstream mechanism closes; the test pins the behaviour so a change to it is
  seen, and the operator's way out (deleting the row by hand) is checked too.

Over the in-memory network under virtual time. May import: pytest, trio, peerkit.impl
(codec, testing, transport), peerkit.proto, peerkit.model.vocabulary.
"""

from __future__ import annotations

import trio
import trio.testing

from peerkit.impl.codec import METHOD_STREAM_RESOURCES
from peerkit.impl.testing import (
    imported_instances,
    let_time_pass,
    memory_call,
    peer,
    two_clusters,
    until,
)
from peerkit.impl.transport import MemoryNetwork
from peerkit.model.vocabulary import PeeringState
from peerkit.proto import peerstream_pb2

RM = peerstream_pb2.ReplicationMessage
TERMINATED_BYTES = RM(terminated=RM.Terminated()).SerializeToString()
C2S = "client→server"
S2C = "server→client"
#: one imported node per deletion batch: 100 nodes keep a deletion routine busy for ~10 s
ONE_NODE_PER_BATCH = len("node-0000") + len("default") + len("dc2")


def stream_calls(net: MemoryNetwork) -> int:
    return sum(1 for c in net.streams if c.method == METHOD_STREAM_RESOURCES)


async def test_reset_while_the_acceptors_terminated_is_in_flight(
        autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with two_clusters(net, deletion_batch_bytes=ONE_NODE_PER_BATCH) as (dc1, dc2):
        await peer(dc1, dc2)
        dc1.store.import_service_nodes("dc2", "default", "bulk", imported_instances("dc2", 100))
        first = memory_call(net)
        first.hold(S2C)  # Terminated will queue, undelivered
        await dc1.client.peering_delete("dc2")
        await trio.testing.wait_all_tasks_blocked()  # dc1's sync pass has sent Terminated
        assert TERMINATED_BYTES in first.in_flight(S2C)
        first.reset()  # Terminated is lost with the connection
        await trio.testing.wait_all_tasks_blocked()
        assert dc2.state("dc1") is not PeeringState.TERMINATED  # not told yet
        assert dc1.row("dc2") is not None  # still being deleted (100 batches at 10/s)
        # the dialer redials after its backoff; the acceptor answers the dial with Terminated
        # (virtual time: the redial comes after seconds, the row is removed after about 10 s)
        with trio.fail_after(8):
            await until(dc2.store, lambda: dc2.state("dc1") is PeeringState.TERMINATED)
        assert stream_calls(net) == 2
        # and both sides clean up: dc1's row goes, dc2 keeps its TERMINATED row without data
        await until(dc1.store, lambda: dc1.row("dc2") is None)
        await until(dc2.store, lambda: dc2.imported("dc1") == []
                    and dc2.store.trust_bundle_read("dc1") is None)
        assert dc1.imported("dc2") == [] and dc1.store.trust_bundle_read("dc2") is None
        assert dc2.state("dc1") is PeeringState.TERMINATED


async def test_reset_while_the_dialers_terminated_is_in_flight(
        autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        first = memory_call(net)
        first.hold(C2S)  # the dialer's Terminated and half-close will queue, undelivered
        await dc2.client.peering_delete("dc1")
        await trio.testing.wait_all_tasks_blocked()  # dc2 sent Terminated and half-closed
        assert first.in_flight(C2S)[-2:] == [TERMINATED_BYTES, "half-close"]
        first.reset()
        await until(dc2.store, lambda: dc2.row("dc1") is None)  # the dialer cleans up
        assert dc2.imported("dc1") == [] and dc2.store.trust_bundle_read("dc1") is None
        await let_time_pass(600)
        # F2: nobody will ever tell dc1; it keeps an active row that reads FAILING
        assert stream_calls(net) == 1
        assert dc1.state("dc2") is PeeringState.FAILING
        # the operator's way out: delete it by hand; the deletion completes
        await dc1.client.peering_delete("dc2")
        await until(dc1.store, lambda: dc1.row("dc2") is None)
        assert dc1.imported("dc2") == [] and dc1.store.trust_bundle_read("dc2") is None

"""Implementation speed: deferred deletion, stream throughput over real gRPC, server memory.

Three measurements of ``peerkit.impl`` (the trio reference implementation), each run in a fresh
subprocess per case, in interleaved rounds (every round runs every case once, in a rotating
order), reported as median and min-max. Nothing is asserted: expectations are computed and
printed next to what was measured.

1. **Deferred deletion** of a peering marked for deletion that still holds N imported nodes
   (default 10,000; each node with one service and two checks, plus the peer's trust bundle):

   (a) *virtual time*: a ``PeeringServer`` (MemoryNetwork, MemoryStore or SqliteStore) is
       started as leader under ``trio.testing.MockClock(autojump_threshold=0)``; its leader
       term runs the real ``DeletionRoutine`` with the real 10/s burst-10 token bucket until the
       row is gone. Reported: the Txn batch count from the 256 KiB rule computed here from the
       name lengths, the count ``node_batches`` gives, the applies actually committed (store
       commits touching the catalog), the token waits, and the virtual time against
       ``max(0, waits - 10) / 10`` s. Once with the default limit (256 KiB) and once with
       ``deletion_batch_bytes`` set so that the batches number about 100.
   (b) *wall time, real clock*: the same deletion run by ``DeletionRoutine`` directly with its
       ``limiter`` argument set to a bucket that never makes anyone wait (rate 1e12/s, burst
       1e9: every ``wait`` is a zero-length ``trio.sleep_until``, i.e. a checkpoint), against
       the store's own work alone: the same calls in the same order (``peering_list_deleted``,
       ``imported_node_dump``, one ``delete_imported_nodes`` per batch, ``trust_bundle_read``,
       ``trust_bundle_delete``, ``peering_delete``) with no routine and no limiter. Plus, with the
       real limiter on the real clock, a small deletion (500 nodes in 50 batches) through
       ``PeeringServer``: wall time against the limiter's ``(waits - 10) / 10`` s.

2. **Stream throughput over real gRPC on 127.0.0.1** (``GrpcTransport``, port 0): cluster dc1
   exports K services (default 1,000; one instance each) to dc2; timed from the ``Establish``
   call on dc2 until dc2's store has committed all K imports. Two baselines in the same run,
   moving K messages of the same sizes (the exported-service Response one way, an ACK-sized
   reply for each the other way) on one bidirectional stream: plain ``grpc.aio`` on asyncio
   (no trio, no peerkit), and peerkit's own trio<->asyncio bridge (``GrpcTransport`` with a bare
   echo handler), so the ratio can be split into bridge cost and protocol cost. The peerkit row
   runs on MemoryStore; a second peerkit row runs both clusters on SqliteStore (what
   ``peerkit serve`` uses). Alongside, the store reads an exporter's stream end makes before
   each publish (``exported_services_for_peer``, then one ``local_instances_by_service`` call
   for all of them, as ``StreamSession._current_exports`` does), timed alone with K services
   exported.

3. **Memory** of a leader ``PeeringServer`` holding P peerings (default 100) with I imported
   service instances each (default 100, i.e. 10,000 instances; each instance on its own node
   with one node check; plus one trust bundle per peering), MemoryStore and SqliteStore, and
   an empty server for the fixed cost: the traced Python heap (``tracemalloc``, in one process)
   and the VmRSS delta (from /proc/self/status, in another process without tracemalloc, whose
   own bookkeeping would inflate RSS), both taken inside ``trio.run`` before the store is
   created and after the data is loaded, with the server still serving.

Run ``.venv/bin/python benchmarks/impl_speed.py [--rounds N] [--quick]``; see
benchmarks/README.md ("Implementation benchmarks").
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "impl_speed.json"
QUICK_RESULTS = HERE / "results" / "impl_speed_quick.json"

sys.path.insert(0, str(HERE))
from machine_info import machine_info  # noqa: E402

PEER = "dc2"  # the peering being deleted (as seen from dc1)
PARTITION = "default"
NODES_PER_SERVICE = 100  # how the imported nodes are grouped into services for the setup
RATE = 10.0  # the deletion limiter (peering-protocol.md §3.2)
BURST = 10
TOKEN = 1.0 / RATE  # one token's worth of time, the tolerance of the comparison
DEFAULT_LIMIT = 256 * 1024
GRPC_METHOD = "/peerkit.bench.Echo/Bidi"

Params = dict[str, Any]
Result = dict[str, Any]


# =============================================================================================
# shared by the workers
# =============================================================================================


def node_name(i: int, length: int) -> str:
    """``node-0000`` ... (9 bytes), or padded with 'x' to ``length`` bytes."""
    base = f"node-{i:04d}"
    return base if length <= len(base) else base + "-" + "x" * (length - len(base) - 1)


def expected_batches(n: int, name_len: int, peer: str, partition: str, limit: int) -> int:
    """The 256 KiB rule worked out by hand (all names the same length): a batch holds
    floor(limit / (len(node) + len(partition) + len(peer))) nodes."""
    size = name_len + len(partition) + len(peer)
    per_batch = max(1, limit // size)
    return math.ceil(n / per_batch)


def limit_for_batches(n: int, name_len: int, batches: int) -> int:
    """A byte limit giving exactly ``batches`` batches of n / batches nodes each."""
    size = name_len + len(PARTITION) + len(PEER)
    return size * math.ceil(n / batches)


def expected_wait_seconds(waits: int) -> float:
    """N token waits on a full bucket of rate 10/s, burst 10: the first 10 are free."""
    return max(0, waits - BURST) / RATE


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@contextmanager
def open_store(kind: str) -> Iterator[Any]:
    """A fresh MemoryStore, or a SqliteStore in a temporary directory (removed afterwards)."""
    from peerkit.impl.store import MemoryStore, SqliteStore

    if kind == "memory":
        store = MemoryStore()
        try:
            yield store
        finally:
            store.close()
        return
    with tempfile.TemporaryDirectory(prefix="peerkit-bench-") as tmp:
        store = SqliteStore(tmp)
        try:
            yield store
        finally:
            store.close()


def load_deletion_case(store: Any, nodes: int, name_len: int) -> dict[str, Any]:
    """Through the store API: an active peering PEER, its trust bundle, ``nodes`` imported
    nodes (one service and two checks each, grouped 100 per service), then the peering marked
    for deletion. Returns the node names and the setup time."""
    from peerkit.impl.store import Check, Node, Peering, Service, TrustBundle

    started = time.perf_counter()
    store.peering_write(Peering(name=PEER))
    store.trust_bundle_write(TrustBundle(peer_name=PEER, trust_domain="dc2.peerkit.local",
                                         root_pems=("-----BEGIN CERTIFICATE-----\n...",)))
    names = [node_name(i, name_len) for i in range(nodes)]
    for start in range(0, nodes, NODES_PER_SERVICE):
        service = f"svc-{start // NODES_PER_SERVICE:03d}"
        batch = []
        for i in range(start, min(nodes, start + NODES_PER_SERVICE)):
            node = names[i]
            sid = f"{service}-{i}"
            batch.append((
                Node(name=node, address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                     peer_name=PEER),
                Service(id=sid, name=service, port=8080, node=node, peer_name=PEER),
                [Check(check_id="serfHealth", name="Serf Health Status", node=node,
                       peer_name=PEER),
                 Check(check_id=f"service:{sid}", name=f"Service '{service}' check",
                       service_id=sid, node=node, peer_name=PEER)],
            ))
        store.import_service_nodes(PEER, PARTITION, service, batch)
    store.peering_mark_deleted(PEER, PARTITION, time.time())
    return {"names": names, "setup_seconds": time.perf_counter() - started}


def _left_over(store: Any) -> dict[str, Any]:
    return {
        "row_left": store.peering_read(PEER) is not None,
        "nodes_left": len(store.imported_node_dump(PEER, PARTITION)),
        "bundle_left": store.trust_bundle_read(PEER) is not None,
    }


def _catalog_commit_counter(store: Any, clock: Callable[[], float]) -> tuple[list[float],
                                                                          Callable[[], None]]:
    """Record the time of every store commit that touched the catalog (one per Txn apply)."""
    from peerkit.impl.store import CATALOG

    times: list[float] = []

    def on_change(change: Any) -> None:
        if CATALOG in change.tables:
            times.append(clock())

    return times, store.subscribe(on_change)


# =============================================================================================
# workers: deletion
# =============================================================================================


def w_deletion_virtual(p: Params) -> Result:
    """(a) Through PeeringServer's leader term, under a MockClock with autojump."""
    import trio
    import trio.testing

    from peerkit.impl.leader import node_batches
    from peerkit.impl.server import PeeringServer
    from peerkit.impl.store import PEERINGS
    from peerkit.impl.testing import until
    from peerkit.impl.transport import MemoryNetwork

    out: Result = {}

    async def main() -> None:
        with open_store(p["store"]) as store:
            loaded = load_deletion_case(store, p["nodes"], p["name_len"])
            names = loaded["names"]
            out["setup_seconds"] = loaded["setup_seconds"]
            out["node_batches_count"] = len(node_batches(names, PARTITION, PEER,
                                                         p["batch_bytes"]))
            applies, unsubscribe = _catalog_commit_counter(store, trio.current_time)
            server = PeeringServer("dc1", store, MemoryNetwork(),
                                   deletion_batch_bytes=p["batch_bytes"])
            v0 = trio.current_time()
            w0 = time.perf_counter()
            c0 = time.process_time()
            async with server.serve("dc1:8502", leader=True):
                await until(store, lambda: store.peering_read(PEER) is None, (PEERINGS,))
                v1 = trio.current_time()
                w1 = time.perf_counter()
                c1 = time.process_time()
                term = server.leadership
                assert term is not None
                stats = term.deletion.stats
                out.update(
                    virtual_seconds=v1 - v0,
                    wall_seconds=w1 - w0,
                    cpu_seconds=c1 - c0,
                    routine_node_batches=stats.node_batches,
                    bundles_deleted=stats.bundles_deleted,
                    rows_deleted=stats.rows_deleted,
                    failures=list(stats.failures),
                    token_waits=term.deletion.limiter.waits,
                )
            unsubscribe()
            out["applies"] = len(applies)
            out["apply_virtual_times"] = [round(t - v0, 6) for t in applies]
            out.update(_left_over(store))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out


def w_deletion_routine_wall(p: Params) -> Result:
    """(b) DeletionRoutine run directly on the real clock, with a bucket that never waits."""
    import trio

    from peerkit.impl.leader import DeletionRoutine
    from peerkit.impl.logs import EventLog
    from peerkit.impl.ratelimit import TokenBucket
    from peerkit.impl.store import PEERINGS
    from peerkit.impl.testing import until

    out: Result = {}

    async def main() -> None:
        with open_store(p["store"]) as store:
            loaded = load_deletion_case(store, p["nodes"], p["name_len"])
            out["setup_seconds"] = loaded["setup_seconds"]
            applies, unsubscribe = _catalog_commit_counter(store, time.perf_counter)
            routine = DeletionRoutine(
                store, EventLog("peerkit.bench.deletion"), batch_bytes=p["batch_bytes"],
                limiter=TokenBucket(1e12, 10**9),
            )
            w0 = time.perf_counter()
            c0 = time.process_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(routine.run)
                await until(store, lambda: store.peering_read(PEER) is None, (PEERINGS,))
                w1 = time.perf_counter()
                c1 = time.process_time()
                nursery.cancel_scope.cancel()
            unsubscribe()
            out.update(wall_seconds=w1 - w0, cpu_seconds=c1 - c0, applies=len(applies),
                       token_waits=routine.limiter.waits,
                       routine_node_batches=routine.stats.node_batches,
                       failures=list(routine.stats.failures))
            out.update(_left_over(store))

    trio.run(main)
    return out


def w_deletion_store_alone(p: Params) -> Result:
    """(b) The store calls the routine makes, in the same order, without routine or limiter."""
    import trio

    from peerkit.impl.leader import node_batches

    out: Result = {}

    async def main() -> None:
        with open_store(p["store"]) as store:
            loaded = load_deletion_case(store, p["nodes"], p["name_len"])
            out["setup_seconds"] = loaded["setup_seconds"]
            w0 = time.perf_counter()
            c0 = time.process_time()
            deleted = store.peering_list_deleted()
            row = deleted[0]
            names = [info.node.name for info in store.imported_node_dump(row.name, row.partition)]
            w_dump = time.perf_counter()
            batches = node_batches(names, row.partition, row.name, p["batch_bytes"])
            for batch in batches:
                store.delete_imported_nodes(row.name, row.partition, batch)
            w_nodes = time.perf_counter()
            if store.trust_bundle_read(row.name, row.partition) is not None:
                store.trust_bundle_delete(row.name, row.partition)
            store.peering_delete(row.name, row.partition)
            w1 = time.perf_counter()
            c1 = time.process_time()
            await trio.lowlevel.checkpoint()
            out.update(wall_seconds=w1 - w0, cpu_seconds=c1 - c0, batches=len(batches),
                       list_and_dump_seconds=w_dump - w0, delete_nodes_seconds=w_nodes - w_dump,
                       bundle_and_row_seconds=w1 - w_nodes)
            out.update(_left_over(store))

    trio.run(main)
    return out


def w_deletion_rate_limited(p: Params) -> Result:
    """(b) A small deletion through PeeringServer on the real clock, real limiter."""
    import trio

    from peerkit.impl.server import PeeringServer
    from peerkit.impl.store import PEERINGS
    from peerkit.impl.testing import until
    from peerkit.impl.transport import MemoryNetwork

    out: Result = {}

    async def main() -> None:
        with open_store(p["store"]) as store:
            loaded = load_deletion_case(store, p["nodes"], p["name_len"])
            out["setup_seconds"] = loaded["setup_seconds"]
            applies, unsubscribe = _catalog_commit_counter(store, time.perf_counter)
            server = PeeringServer("dc1", store, MemoryNetwork(),
                                   deletion_batch_bytes=p["batch_bytes"])
            w0 = time.perf_counter()
            c0 = time.process_time()
            async with server.serve("dc1:8502", leader=True):
                await until(store, lambda: store.peering_read(PEER) is None, (PEERINGS,))
                w1 = time.perf_counter()
                c1 = time.process_time()
                term = server.leadership
                assert term is not None
                out.update(token_waits=term.deletion.limiter.waits,
                           routine_node_batches=term.deletion.stats.node_batches,
                           failures=list(term.deletion.stats.failures))
            unsubscribe()
            out.update(wall_seconds=w1 - w0, cpu_seconds=c1 - c0, applies=len(applies),
                       first_apply_seconds=applies[0] - w0 if applies else None,
                       last_apply_seconds=applies[-1] - w0 if applies else None)
            out.update(_left_over(store))

    trio.run(main)
    return out


# =============================================================================================
# workers: stream throughput
# =============================================================================================


def exported_message_sizes() -> dict[str, int]:
    """Serialized sizes of the Response carrying one exported service (as ``_publish`` builds
    it, for the instance ``_register_exports`` registers) and of the ACK that answers it."""
    from peerkit.impl.codec import instances_to_pb
    from peerkit.impl.store import MemoryStore
    from peerkit.impl.stream import OP_UPSERT, ReplicationMessage
    from peerkit.proto.resources import TYPE_URL_EXPORTED_SERVICE

    store = MemoryStore()
    _register_exports(store, 1)
    instances = store.local_service_instances("svc-0000")
    response = ReplicationMessage.Response(
        Nonce=f"{1000:08x}", ResourceURL=TYPE_URL_EXPORTED_SERVICE, ResourceID="svc-0000",
        operation=OP_UPSERT,
    )
    response.Resource.Pack(instances_to_pb(instances))
    message = ReplicationMessage(response=response)
    ack = ReplicationMessage(request=ReplicationMessage.Request(
        ResourceURL=TYPE_URL_EXPORTED_SERVICE, ResponseNonce=f"{1000:08x}"))
    store.close()
    return {"message_bytes": message.ByteSize(), "ack_bytes": ack.ByteSize()}


def _register_exports(store: Any, count: int, local: str = "dc1", peer: str = "dc2") -> None:
    """``count`` local services svc-0000..., one instance each on its own node with a service
    check, all exported to ``peer`` (store API: the set-up is not timed)."""
    from peerkit.impl.store import Check, Node, Service

    for i in range(count):
        node, name = f"{local}-node-{i:04d}", f"svc-{i:04d}"
        store.register_service(
            Node(name=node, address=f"10.1.{i // 256}.{i % 256}"),
            Service(id=name, name=name, port=8080, tags=("v1",), node=node),
            [Check(check_id=f"service:{name}", name=f"Service '{name}' check",
                   service_id=name, node=node)],
        )
        store.export_service(name, peer)


def _has_imported(store: Any, peer: str, k: int) -> bool:
    """Whether ``store`` holds the last of the K services ``peer`` exports to it (a point read
    of one row). An exporter sends its services in name order on one stream and the importer
    commits them in that order, so the last one in means all are in (checked in full after
    the clock stops)."""
    from peerkit.impl.store import Service

    name = f"svc-{k - 1:04d}"
    with store._read() as tx:  # private: a point read the store API has no call for
        return tx.get(Service, (peer, PARTITION, f"{peer}-node-{k - 1:04d}", name)) is not None


async def _wait_imported(cluster: Any, peer: str, k: int, clock: Callable[[], float]) -> float:
    """Wait until ``cluster`` holds the K services imported from ``peer``; return the time of
    the catalog commit that completed them (taken in the store's subscriber, so it costs the
    same whatever the commits hold: one import each, or a batch)."""
    import trio

    from peerkit.impl.store import CATALOG

    done = trio.Event()
    at: list[float] = []

    def on_change(change: Any) -> None:
        if CATALOG in change.tables and not done.is_set() and _has_imported(cluster.store,
                                                                            peer, k):
            at.append(clock())
            done.set()

    unsubscribe = cluster.store.subscribe(on_change)
    try:
        await done.wait()
        return at[0]
    finally:
        unsubscribe()


def _pin_to_one_cpu() -> int:
    """Pin this process (this thread, and the threads it starts from now on) to the CPU it
    runs on; return that CPU."""
    try:
        with open("/proc/thread-self/stat") as f:
            cpu = int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def w_stream_impl(p: Params) -> Result:
    """peerkit over GrpcTransport: Establish on dc2 until dc2 has imported all K services (and,
    with ``p["mutual"]``, dc1 all K services dc2 exports to it). Both clusters on
    ``p["store"]`` (MemoryStore, or SqliteStore as ``peerkit serve`` uses)."""
    import trio

    from peerkit.impl.testing import running_cluster
    from peerkit.impl.transport.grpc_bridge import GrpcTransport

    k = p["count"]
    mutual = bool(p.get("mutual"))
    out: Result = {}
    if p.get("one_cpu"):
        out["cpu"] = _pin_to_one_cpu()  # before the loop thread and gRPC's threads start

    async def main() -> None:
        with trio.fail_after(900):
            async with GrpcTransport() as transport, AsyncExitStack() as stack:
                store1 = stack.enter_context(open_store(p["store"]))
                store2 = stack.enter_context(open_store(p["store"]))
                dc1 = await stack.enter_async_context(
                    running_cluster(transport, "dc1", "127.0.0.1:0", store=store1))
                dc2 = await stack.enter_async_context(
                    running_cluster(transport, "dc2", "127.0.0.1:0", store=store2))
                _register_exports(dc1.store, k)
                if mutual:
                    _register_exports(dc2.store, k, local="dc2", peer="dc1")
                token = await dc1.client.generate_token("dc2")
                ends: dict[str, float] = {}

                async def wait(cluster: Any, peer: str) -> None:
                    ends[cluster.name] = await _wait_imported(cluster, peer, k,
                                                              time.perf_counter)

                w0 = time.perf_counter()
                c0 = time.process_time()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wait, dc2, "dc1")
                    if mutual:
                        nursery.start_soon(wait, dc1, "dc2")
                    await trio.sleep(0)  # both subscribed before the first import
                    await dc2.client.establish("dc1", token)
                    w_est = time.perf_counter()
                w1 = max(ends.values())
                c1 = time.process_time()
                imported = dc2.imported("dc1")
                out.update(
                    seconds=w1 - w0, cpu_seconds=c1 - c0, establish_rpc_seconds=w_est - w0,
                    dc2_seconds=ends["dc2"] - w0, imported_services=len(imported),
                )
                if mutual:
                    out["dc1_seconds"] = ends["dc1"] - w0
                    if len(dc1.imported("dc2")) != k:
                        raise RuntimeError(f"dc1 imported {len(dc1.imported('dc2'))}, not {k}")
                if len(imported) != k:
                    raise RuntimeError(f"dc2 imported {len(imported)} services, expected {k}")
        # leaving the blocks stopped both servers, the channels and the loop thread

    trio.run(main)
    out.update(exported_message_sizes())
    return out


def w_publish_scan(p: Params) -> Result:
    """The store reads an exporter's stream end makes to compute what to publish
    (``StreamSession._current_exports``: ``exported_services_for_peer``, then one
    ``local_instances_by_service`` call for all of them), with K services exported. The
    stream does this twice when it starts and once after every catalog/exports/peerings
    change on the exporter, on the trio thread."""
    from peerkit.impl.store import Peering

    k = p["count"]
    with open_store(p["store"]) as store:
        _register_exports(store, k)
        store.peering_write(Peering(name="dc2"))
        w0 = time.perf_counter()
        c0 = time.process_time()
        names = store.exported_services_for_peer("dc2")
        current = store.local_instances_by_service(names)
        w1 = time.perf_counter()
        c1 = time.process_time()
    return {"seconds": w1 - w0, "cpu_seconds": c1 - c0, "services": len(current)}


def _payloads(p: Params) -> tuple[bytes, bytes]:
    message = bytes(i % 251 for i in range(p["message_bytes"]))
    ack = bytes(i % 241 for i in range(p["ack_bytes"]))
    return message, ack


def w_stream_bridge(p: Params) -> Result:
    """GrpcTransport (peerkit's trio<->asyncio bridge) with a bare echo handler."""
    import trio

    from peerkit.impl.transport import BidiStream, EndOfStream, StreamMethod, identity
    from peerkit.impl.transport.grpc_bridge import GrpcTransport

    k = p["count"]
    message, ack = _payloads(p)
    received: list[float] = []
    done = trio.Event()
    out: Result = {}

    async def handler(stream: BidiStream[bytes, bytes]) -> None:
        while True:
            try:
                await stream.receive()
            except EndOfStream:
                return
            received.append(time.perf_counter())
            if len(received) == k:
                done.set()
            await stream.send(ack)

    async def main() -> None:
        with trio.fail_after(600):
            async with GrpcTransport() as transport, transport.serve(
                "127.0.0.1:0", [StreamMethod(GRPC_METHOD, handler, identity, identity)]
            ) as server, transport.connect(server.address) as channel:
                w0 = time.perf_counter()
                c0 = time.process_time()
                stream = channel.open_stream(GRPC_METHOD, identity, identity)
                replies = 0

                async def sender() -> None:
                    for _ in range(k):
                        await stream.send(message)
                    await stream.close_send()

                async def reader() -> None:
                    nonlocal replies
                    for _ in range(k):
                        await stream.receive()
                        replies += 1
                    out["all_replies_seconds"] = time.perf_counter() - w0

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender)
                    nursery.start_soon(reader)
                    await done.wait()
                    w1 = time.perf_counter()
                    c1 = time.process_time()
                out.update(seconds=w1 - w0, cpu_seconds=c1 - c0, first_seconds=received[0] - w0,
                           last_seconds=received[-1] - w0, received=len(received),
                           replies=replies)

    trio.run(main)
    return out


def w_stream_aio(p: Params) -> Result:
    """Plain grpc.aio on asyncio (no trio, no peerkit): the same message pattern."""
    import asyncio

    import grpc
    import grpc.aio

    k = p["count"]
    message, ack = _payloads(p)
    out: Result = {}
    if p.get("one_cpu"):
        out["cpu"] = _pin_to_one_cpu()

    async def main() -> None:
        received: list[float] = []
        done = asyncio.Event()

        async def behavior(_requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    return
                received.append(time.perf_counter())
                if len(received) == k:
                    done.set()
                await context.write(ack)

        server = grpc.aio.server()
        service, method = GRPC_METHOD[1:].split("/")
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {method: grpc.stream_stream_rpc_method_handler(behavior)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                w0 = time.perf_counter()
                c0 = time.process_time()
                call = channel.stream_stream(GRPC_METHOD)()

                async def sender() -> None:
                    for _ in range(k):
                        await call.write(message)
                    await call.done_writing()

                async def reader() -> int:
                    n = 0
                    for _ in range(k):
                        await call.read()
                        n += 1
                    out["all_replies_seconds"] = time.perf_counter() - w0
                    return n

                tasks = [asyncio.create_task(sender()), asyncio.create_task(reader())]
                await asyncio.wait_for(done.wait(), 600)
                w1 = time.perf_counter()
                c1 = time.process_time()
                _, replies = await asyncio.gather(*tasks)
                await call.code()
                out.update(seconds=w1 - w0, cpu_seconds=c1 - c0, first_seconds=received[0] - w0,
                           last_seconds=received[-1] - w0, received=len(received),
                           replies=replies)
        finally:
            await server.stop(0)

    asyncio.run(main())
    return out


# =============================================================================================
# workers: memory
# =============================================================================================


def w_memory(p: Params) -> Result:
    """A leader PeeringServer with P peerings x I imported instances; heap or RSS delta."""
    import trio
    import trio.testing

    from peerkit.impl.server import PeeringServer
    from peerkit.impl.store import Peering, TrustBundle
    from peerkit.impl.testing import imported_instances
    from peerkit.impl.transport import MemoryNetwork

    traced = p["mode"] == "tracemalloc"
    out: Result = {}
    if traced:
        import tracemalloc

        tracemalloc.start()

    def measure() -> int:
        gc.collect()
        if traced:
            return tracemalloc.get_traced_memory()[0]
        return _rss_kib() * 1024

    async def main() -> None:
        before = measure()
        with open_store(p["store"]) as store:
            server = PeeringServer("dc1", store, MemoryNetwork())
            async with server.serve("dc1:8502", leader=True):
                w0 = time.perf_counter()
                for i in range(p["peerings"]):
                    peer = f"peer-{i:03d}"
                    store.peering_write(Peering(name=peer))
                    store.trust_bundle_write(TrustBundle(
                        peer_name=peer, trust_domain=f"{peer}.peerkit.local",
                        root_pems=(f"-----BEGIN CERTIFICATE-----\n{peer}\n",)))
                    if p["instances"]:
                        store.import_service_nodes(
                            peer, PARTITION, "svc",
                            imported_instances(peer, p["instances"], service="svc"))
                out["load_seconds"] = time.perf_counter() - w0
                await trio.testing.wait_all_tasks_blocked()
                after = measure()
                if traced:
                    import tracemalloc

                    out["traced_peak_bytes"] = tracemalloc.get_traced_memory()[1]
                    snapshot = tracemalloc.take_snapshot()
                    top = snapshot.statistics("filename")[:6]
                    out["top_files"] = [
                        {"file": _short(s.traceback[0].filename), "bytes": s.size}
                        for s in top
                    ]
                out["delta_bytes"] = after - before
                dump = store.dump()  # after measuring: the dump itself allocates
                out.update(peerings=len(dump.peerings), services=len(dump.services),
                           nodes=len(dump.nodes), checks=len(dump.checks),
                           bundles=len(dump.trust_bundles))
                path = getattr(store, "path", None)
                if path is not None:
                    out["db_file_bytes"] = sum(
                        f.stat().st_size for f in Path(path).parent.iterdir() if f.is_file())
        out["vm_hwm_kib"] = _hwm_kib()

    trio.run(main)
    return out


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    try:
        return str(Path(filename).resolve().relative_to(REPO))
    except ValueError:
        return filename


WORKERS: dict[str, Callable[[Params], Result]] = {
    "deletion_virtual": w_deletion_virtual,
    "deletion_routine_wall": w_deletion_routine_wall,
    "deletion_store_alone": w_deletion_store_alone,
    "deletion_rate_limited": w_deletion_rate_limited,
    "stream_impl": w_stream_impl,
    "publish_scan": w_publish_scan,
    "stream_bridge": w_stream_bridge,
    "stream_aio": w_stream_aio,
    "memory": w_memory,
}


def worker(kind: str, params_json: str) -> None:
    params: Params = json.loads(params_json)
    result = WORKERS[kind](params)
    result["peak_rss_kib"] = _hwm_kib()
    print(json.dumps(result))


# =============================================================================================
# the driver
# =============================================================================================


@dataclass
class Case:
    key: str  # unique label
    group: str  # deletion_a, deletion_b, rate_limited, stream, memory
    kind: str  # worker
    params: Params
    python: str = sys.executable  # the interpreter (and so the peerkit) the worker runs
    runs: list[Result] = field(default_factory=list)


@dataclass
class Sizes:
    nodes: int
    services: int
    peerings: int
    instances: int
    small_nodes: int
    small_batches: int
    mutual_services: int


def build_cases(sizes: Sizes, message: dict[str, int]) -> list[Case]:
    name_len = len(node_name(0, 0))
    hundred = limit_for_batches(sizes.nodes, name_len, 100)
    cases: list[Case] = []
    for store in ("memory", "sqlite"):
        for label, limit in (("256KiB", DEFAULT_LIMIT), (f"{hundred}B", hundred)):
            base = {"store": store, "nodes": sizes.nodes, "name_len": name_len,
                    "batch_bytes": limit, "limit_label": label}
            cases.append(Case(f"a/{store}/{label}", "deletion_a", "deletion_virtual", base))
            cases.append(Case(f"b-routine/{store}/{label}", "deletion_b",
                              "deletion_routine_wall", base))
            cases.append(Case(f"b-store/{store}/{label}", "deletion_b",
                              "deletion_store_alone", base))
        small = limit_for_batches(sizes.small_nodes, name_len, sizes.small_batches)
        cases.append(Case(f"rate-limited/{store}/{sizes.small_nodes}", "rate_limited",
                          "deletion_rate_limited",
                          {"store": store, "nodes": sizes.small_nodes, "name_len": name_len,
                           "batch_bytes": small, "limit_label": f"{small}B"}))
        # the full deletion with ~100 batches on the real clock: limiter or store work?
        cases.append(Case(f"rate-limited/{store}/{sizes.nodes}", "rate_limited",
                          "deletion_rate_limited",
                          {"store": store, "nodes": sizes.nodes, "name_len": name_len,
                           "batch_bytes": hundred, "limit_label": f"{hundred}B"}))
    stream = {"count": sizes.services, **message}
    cases.append(Case("stream/peerkit", "stream", "stream_impl", {**stream, "store": "memory"}))
    cases.append(Case("stream/peerkit-sqlite", "stream", "stream_impl",
                      {**stream, "store": "sqlite"}))
    # mutual exports (issue 10): K services each way against K one way, SQLite stores
    for label, mutual in (("one-way", False), ("both-ways", True)):
        cases.append(Case(f"mutual/{label}-sqlite", "stream", "stream_impl",
                          {**message, "count": sizes.mutual_services, "store": "sqlite",
                           "mutual": mutual}))
    # the same, the worker process pinned to one CPU (see the module doc, item 2)
    cases.append(Case("stream/peerkit-sqlite-1cpu", "stream", "stream_impl",
                      {**stream, "store": "sqlite", "one_cpu": True}))
    cases.append(Case("mutual/one-way-sqlite-1cpu", "stream", "stream_impl",
                      {**message, "count": sizes.mutual_services, "store": "sqlite",
                       "one_cpu": True}))
    for store in ("memory", "sqlite"):
        cases.append(Case(f"publish/{store}", "publish", "publish_scan",
                          {"store": store, "count": sizes.services}))
    cases.append(Case("stream/bridge-echo", "stream", "stream_bridge", stream))
    cases.append(Case("stream/grpc.aio-echo", "stream", "stream_aio", stream))
    cases.append(Case("stream/grpc.aio-echo-1cpu", "stream", "stream_aio",
                      {**stream, "one_cpu": True}))
    for store in ("memory", "sqlite"):
        for mode in ("tracemalloc", "rss"):
            cases.append(Case(f"memory/{store}/{mode}", "memory", "memory",
                              {"store": store, "mode": mode, "peerings": sizes.peerings,
                               "instances": sizes.instances}))
    for mode in ("tracemalloc", "rss"):
        cases.append(Case(f"memory/empty/{mode}", "memory", "memory",
                          {"store": "memory", "mode": mode, "peerings": 0, "instances": 0}))
    return cases


def impl_fingerprint(repo: Path = REPO) -> str:
    """The commit plus a hash of uncommitted changes under impl/, model/ and proto/: every
    worker imports peerkit from the working tree, so a commit landing mid-run changes what
    later cases measure (it happened while this benchmark was being written)."""
    import hashlib

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=repo,
                                  timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("diff", "HEAD", "--", "impl", "model", "proto")
    return commit + ("+" + hashlib.sha1(dirty.encode()).hexdigest()[:8] if dirty else "")


def run_case(case: Case) -> Result:
    fingerprint = impl_fingerprint()
    if case.python != sys.executable:
        fingerprint = f"{case.python} (see --compare-python)"
    started = time.perf_counter()
    load = os.getloadavg()[0]
    done = subprocess.run(
        [case.python, str(Path(__file__).resolve()), "--worker", case.kind,
         "--params", json.dumps(case.params)],
        capture_output=True, text=True, cwd=str(REPO), timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{case.key} failed:\n{done.stderr.strip()[-3000:]}")
    out: Result = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_seconds"] = round(time.perf_counter() - started, 2)
    out["impl"] = fingerprint
    out["load_average_1min_before"] = round(load, 2)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    med = statistics.median(values)
    return {
        "median": med, "min": min(values), "max": max(values),
        "spread_percent": round(100 * (max(values) - min(values)) / med, 1) if med else 0.0,
    }


def _r(x: float, digits: int = 3) -> float:
    return round(x, digits)


def summarise(cases: list[Case], sizes: Sizes) -> dict[str, Any]:
    by = {c.key: c for c in cases}
    summary: dict[str, Any] = {"deletion_virtual": {}, "deletion_wall": {},
                               "deletion_rate_limited": {}, "stream": {}, "publish": {},
                               "memory": {}}
    name_len = len(node_name(0, 0))
    for c in cases:
        if c.group == "deletion_a":
            p = c.params
            formula = expected_batches(p["nodes"], p["name_len"], PEER, PARTITION,
                                       p["batch_bytes"])
            runs = c.runs
            waits_expected = formula + 1 + 1  # batches, the bundle, the final wait
            measured = [r["virtual_seconds"] for r in runs]
            expected = expected_wait_seconds(waits_expected)
            summary["deletion_virtual"][c.key] = {
                "store": p["store"], "batch_bytes": p["batch_bytes"],
                "node_bytes": name_len + len(PARTITION) + len(PEER),
                "batches_formula": formula,
                "batches_node_batches": sorted({r["node_batches_count"] for r in runs}),
                "applies_counted": sorted({r["applies"] for r in runs}),
                "routine_node_batches": sorted({r["routine_node_batches"] for r in runs}),
                "token_waits_expected": waits_expected,
                "token_waits_counted": sorted({r["token_waits"] for r in runs}),
                "expected_virtual_seconds": expected,
                "virtual_seconds": {k: _r(v, 6) for k, v in _stats(measured).items()},
                "within_one_token": all(abs(v - expected) <= TOKEN + 1e-9 for v in measured),
                "wall_seconds_under_mockclock": {k: _r(v) for k, v in
                                                 _stats([r["wall_seconds"] for r in runs]).items()},
                "failures": sorted({f for r in runs for f in r["failures"]}),
                "left_over": [{k: r[k] for k in ("row_left", "nodes_left", "bundle_left")}
                              for r in runs],
            }
        elif c.group == "deletion_b" and c.kind == "deletion_routine_wall":
            p = c.params
            alone = by[c.key.replace("b-routine/", "b-store/")]
            routine = [r["wall_seconds"] for r in c.runs]
            store = [r["wall_seconds"] for r in alone.runs]
            paired = [a / b for a, b in zip(routine, store, strict=False)]
            summary["deletion_wall"][c.key.replace("b-routine/", "")] = {
                "store": p["store"], "batch_bytes": p["batch_bytes"],
                "batches": sorted({r["batches"] for r in alone.runs}),
                "routine_seconds": {k: _r(v) for k, v in _stats(routine).items()},
                "routine_cpu_seconds_median": _r(statistics.median(
                    r["cpu_seconds"] for r in c.runs)),
                "store_alone_seconds": {k: _r(v) for k, v in _stats(store).items()},
                "store_alone_cpu_seconds_median": _r(statistics.median(
                    r["cpu_seconds"] for r in alone.runs)),
                "store_alone_phases_median": {
                    k: _r(statistics.median(r[k] for r in alone.runs), 4)
                    for k in ("list_and_dump_seconds", "delete_nodes_seconds",
                              "bundle_and_row_seconds")},
                "ratio_of_medians": _r(statistics.median(routine) / statistics.median(store)),
                "ratio_per_round": {k: _r(v) for k, v in _stats(paired).items()},
                "setup_seconds_median": _r(statistics.median(
                    r["setup_seconds"] for r in c.runs + alone.runs), 2),
            }
        elif c.group == "rate_limited":
            p = c.params
            formula = expected_batches(p["nodes"], p["name_len"], PEER, PARTITION,
                                       p["batch_bytes"])
            waits = formula + 2
            measured = [r["wall_seconds"] for r in c.runs]
            spans = [r["last_apply_seconds"] - r["first_apply_seconds"] for r in c.runs]
            summary["deletion_rate_limited"][c.key] = {
                "store": p["store"], "nodes": p["nodes"], "batch_bytes": p["batch_bytes"],
                "batches_formula": formula,
                "applies_counted": sorted({r["applies"] for r in c.runs}),
                "token_waits_counted": sorted({r["token_waits"] for r in c.runs}),
                "expected_seconds": expected_wait_seconds(waits),
                "wall_seconds": {k: _r(v) for k, v in _stats(measured).items()},
                "over_expected_seconds_median": _r(statistics.median(measured)
                                                   - expected_wait_seconds(waits)),
                "first_apply_seconds_median": _r(statistics.median(
                    r["first_apply_seconds"] for r in c.runs)),
                "apply_span_seconds": {k: _r(v) for k, v in _stats(spans).items()},
                "apply_span_expected_seconds": expected_wait_seconds(formula),
                "cpu_seconds_median": _r(statistics.median(r["cpu_seconds"] for r in c.runs)),
            }
        elif c.group == "stream":
            k = c.params["count"]
            total = [k / r["seconds"] for r in c.runs]
            steady = [(k - 1) / (r["last_seconds"] - r["first_seconds"]) for r in c.runs
                      if "last_seconds" in r]  # the echoes only (peerkit: see _wait_imported)
            summary["stream"][c.key] = {
                "messages": k, "message_bytes": c.params["message_bytes"],
                "ack_bytes": c.params["ack_bytes"],
                "messages_per_second": {k2: round(v) for k2, v in _stats(total).items()},
                "seconds": {k2: _r(v) for k2, v in
                            _stats([r["seconds"] for r in c.runs]).items()},
                "cpu_seconds_median": _r(statistics.median(r["cpu_seconds"] for r in c.runs)),
            }
            if steady:
                summary["stream"][c.key]["steady_messages_per_second"] = {
                    k2: round(v) for k2, v in _stats(steady).items()}
            if c.params.get("mutual"):  # both directions: services imported per second
                summary["stream"][c.key]["services_per_second_both_ways"] = {
                    k2: round(2 * v) for k2, v in _stats(total).items()}
        elif c.group == "publish":
            summary["publish"][c.key] = {
                "store": c.params["store"], "services": c.params["count"],
                "seconds": {k: _r(v) for k, v in
                            _stats([r["seconds"] for r in c.runs]).items()},
            }
        elif c.group == "memory":
            summary["memory"][c.key] = {
                "store": c.params["store"], "mode": c.params["mode"],
                "peerings": c.params["peerings"], "instances_per_peering": c.params["instances"],
                "delta_mib": {k: _r(v / 2**20, 2) for k, v in
                              _stats([r["delta_bytes"] for r in c.runs]).items()},
                "load_seconds_median": _r(statistics.median(r["load_seconds"] for r in c.runs), 2),
                "counts": {k: c.runs[0][k] for k in ("peerings", "services", "nodes", "checks",
                                                     "bundles")},
            }
            if "db_file_bytes" in c.runs[0]:
                summary["memory"][c.key]["db_file_mib"] = _r(
                    statistics.median(r["db_file_bytes"] for r in c.runs) / 2**20, 2)
            if "top_files" in c.runs[-1]:
                summary["memory"][c.key]["top_files_last_run"] = c.runs[-1]["top_files"]
    # stream ratios (per round, paired): every stream row against the plain grpc.aio echo of the
    # same round, and peerkit against the bridge echo
    ratios: dict[str, Any] = {}
    pairs = []
    for c in cases:
        suffix = "@before" if c.key.endswith("@before") else ""
        if c.key.startswith("stream/") and c.kind != "stream_aio":
            pairs.append((c.key, "stream/grpc.aio-echo" + suffix))
        if c.key == "stream/peerkit" + suffix:
            pairs.append((c.key, "stream/bridge-echo" + suffix))
    for impl_key, base in pairs:
        impl, other = by.get(impl_key), by.get(base)
        if impl is None or other is None or not impl.runs:
            continue
        paired = [b["seconds"] / a["seconds"]
                  for a, b in zip(impl.runs, other.runs, strict=False)]
        med_a = statistics.median(r["seconds"] for r in impl.runs)
        med_b = statistics.median(r["seconds"] for r in other.runs)
        ratios[f"{impl_key.split('/', 1)[1]}/{base.split('/')[1]}"] = {
            "of_medians": _r(med_b / med_a),
            "per_round": {k: _r(v) for k, v in _stats(paired).items()},
        }
    summary["stream_ratios"] = ratios
    # memory: per instance, over the empty server
    mem = summary["memory"]
    per_instance: dict[str, Any] = {}
    total_instances = sizes.peerings * sizes.instances
    for store in ("memory", "sqlite"):
        for mode in ("tracemalloc", "rss"):
            full, empty = mem.get(f"memory/{store}/{mode}"), mem.get(f"memory/empty/{mode}")
            if full and empty and total_instances:
                per_instance[f"{store}/{mode}"] = round(
                    (full["delta_mib"]["median"] - empty["delta_mib"]["median"]) * 2**20
                    / total_instances)
    summary["memory_bytes_per_instance_over_empty"] = per_instance
    return summary


def batch_rule_check() -> list[dict[str, Any]]:
    """The 256 KiB rule by hand against ``node_batches`` for 9-, 64- and 128-byte node names
    (no deletion is run: a consistency check of the batch arithmetic used above)."""
    from peerkit.impl.leader import node_batches

    rows = []
    n = 10_000
    for length in (9, 64, 128):
        names = [node_name(i, length) for i in range(n)]
        if {len(x) for x in names} != {length}:
            continue
        rows.append({
            "nodes": n, "node_name_bytes": length,
            "node_bytes": length + len(PARTITION) + len(PEER),
            "formula": expected_batches(n, length, PEER, PARTITION, DEFAULT_LIMIT),
            "node_batches": len(node_batches(names, PARTITION, PEER, DEFAULT_LIMIT)),
        })
    return rows


# ---- printing --------------------------------------------------------------------------------


def _mm(s: dict[str, float], fmt: str) -> str:
    return f"{format(s['median'], fmt)} ({format(s['min'], fmt)}-{format(s['max'], fmt)})"


def print_table(report: dict[str, Any]) -> None:
    s = report["summary"]
    m = report["machine"]
    sz = report["sizes"]
    print(f"\nimpl speed: {m['cpu_model']}, {m['cores']} cores, Python {m['python']}, "
          f"peerkit {', '.join(report['impl_versions_measured'])}; {report['rounds']} "
          "interleaved rounds, fresh process per case; load average "
          f"{report['load_average_before'][0]:.2f} -> "
          f"{report['load_average_after'][0]:.2f} (1-min, max seen "
          f"{report['load_average_max_seen']:.2f}); median (min-max)")

    if report["impl_changed_during_run"]:
        print(f"\nWARNING: the implementation changed during the run "
              f"({', '.join(report['impl_versions_measured'])}): the rounds measured "
              "different code; run again")
    print(f"\n1a. deferred deletion, {sz['nodes']:,} imported nodes (1 service + 2 checks each) "
          "+ bundle, virtual time (MockClock autojump), PeeringServer leader -> DeletionRoutine")
    hdr = (f"{'store':<7}{'limit':>9}{'node B':>7}{'batches calc/nb/applied':>25}"
           f"{'waits':>7}{'expected s':>11}{'virtual s':>11}{'<=1 token':>10}"
           f"{'wall s (mock)':>22}")
    print(hdr)
    print("-" * len(hdr))
    for v in s["deletion_virtual"].values():
        batches = (f"{v['batches_formula']}/{','.join(map(str, v['batches_node_batches']))}/"
                   f"{','.join(map(str, v['applies_counted']))}")
        waits = ",".join(map(str, v["token_waits_counted"]))
        print(f"{v['store']:<7}{v['batch_bytes']:>9}{v['node_bytes']:>7}{batches:>25}"
              f"{waits:>7}{v['expected_virtual_seconds']:>11.2f}"
              f"{v['virtual_seconds']['median']:>11.3f}{v['within_one_token']!s:>10}"
              f"{_mm(v['wall_seconds_under_mockclock'], '.2f'):>22}")

    print("\n1b. the same deletion, wall time on the real clock: DeletionRoutine (limiter at "
          "1e12/s) vs the store's calls alone")
    hdr = (f"{'store':<7}{'limit':>9}{'batches':>8}{'routine s':>22}{'store alone s':>22}"
           f"{'ratio':>7}{'per round':>13}  store phases: dump / deletes / bundle+row s")
    print(hdr)
    print("-" * len(hdr))
    for v in s["deletion_wall"].values():
        ph = v["store_alone_phases_median"]
        rr = v["ratio_per_round"]
        rr_text = f"{rr['min']:.3f}-{rr['max']:.3f}"
        print(f"{v['store']:<7}{v['batch_bytes']:>9}{','.join(map(str, v['batches'])):>8}"
              f"{_mm(v['routine_seconds'], '.2f'):>22}{_mm(v['store_alone_seconds'], '.2f'):>22}"
              f"{v['ratio_of_medians']:>7.3f}{rr_text:>13}  "
              f"{ph['list_and_dump_seconds']:.2f} / {ph['delete_nodes_seconds']:.2f} / "
              f"{ph['bundle_and_row_seconds']:.4f}")
    print("\n    with the real limiter, real clock, through PeeringServer:")
    hdr = (f"    {'store':<7}{'nodes':>7}{'limit':>7}{'batches':>8}{'waits':>6}"
           f"{'wall s':>24}{'limiter-only s':>15}{'1st apply s':>12}"
           f"{'1st->last apply s':>24}{'expected':>9}")
    print(hdr)
    for v in s["deletion_rate_limited"].values():
        waits = ",".join(map(str, v["token_waits_counted"]))
        print(f"    {v['store']:<7}{v['nodes']:>7}{v['batch_bytes']:>7}{v['batches_formula']:>8}"
              f"{waits:>6}{_mm(v['wall_seconds'], '.3f'):>24}{v['expected_seconds']:>15.2f}"
              f"{v['first_apply_seconds_median']:>12.3f}"
              f"{_mm(v['apply_span_seconds'], '.3f'):>24}"
              f"{v['apply_span_expected_seconds']:>9.2f}")

    print(f"\n2. stream over real gRPC on 127.0.0.1: {sz['services']:,} messages "
          f"(exported-service Response, {report['message_sizes']['message_bytes']} B; "
          f"ACK {report['message_sizes']['ack_bytes']} B back for each)")
    hdr = (f"{'row':<32}{'msgs':>6}{'msg/s from start':>24}{'s':>24}{'CPU s':>7}")
    print(hdr)
    print("-" * len(hdr))
    for key, v in s["stream"].items():
        both = " (x2: both ways)" if "services_per_second_both_ways" in v else ""
        print(f"{key:<32}{v['messages']:>6}{_mm(v['messages_per_second'], ','):>24}"
              f"{_mm(v['seconds'], '.3f'):>24}{v['cpu_seconds_median']:>7.2f}{both}")
    for name, r in s["stream_ratios"].items():
        pr = r["per_round"]
        print(f"    {name:<36} {r['of_medians']:.3f} (per round {pr['min']:.3f}-{pr['max']:.3f})")

    print("    what an exporter's stream end reads from its store before each publish "
          "(twice at stream start, once per local change):")
    for v in s["publish"].values():
        print(f"    {v['store']:<7} {v['services']:,} exported services: "
              f"{_mm(v['seconds'], '.3f')} s")

    print(f"\n3. memory: leader PeeringServer, {sz['peerings']} peerings x {sz['instances']} "
          "imported instances (+1 node, 1 check each) + 1 bundle per peering")
    hdr = f"{'case':<28}{'delta MiB':>22}{'load s':>8}  counts"
    print(hdr)
    print("-" * len(hdr))
    for key, v in s["memory"].items():
        extra = f", db files {v['db_file_mib']} MiB" if "db_file_mib" in v else ""
        c = v["counts"]
        print(f"{key.removeprefix('memory/'):<28}{_mm(v['delta_mib'], '.2f'):>22}"
              f"{v['load_seconds_median']:>8.2f}  {c['peerings']} peerings, {c['services']} "
              f"services, {c['checks']} checks{extra}")
    for key, b in s["memory_bytes_per_instance_over_empty"].items():
        print(f"    per instance over the empty server, {key}: {b:,} B")
    print(f"\nwritten: {report['json']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (2,000 nodes, 200 services, 20x50 instances), for a "
                             "smoke run; writes results/impl_speed_quick.json")
    parser.add_argument("--json", type=Path, default=None, help=f"default {RESULTS}")
    parser.add_argument("--mutual", type=int, default=None,
                        help="services each way in the mutual-exports cases (default 3,000; "
                             "300 with --quick)")
    parser.add_argument("--only", default="",
                        help="comma-separated case groups to run (deletion_a, deletion_b, "
                             "rate_limited, stream, publish, memory); default all")
    parser.add_argument("--compare-python", default="",
                        help="also run every selected case with this interpreter (a venv with "
                             "another checkout of peerkit installed), as KEY@before, "
                             "interleaved in the same rounds")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.params)
        return 0
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.quick:
        sizes = Sizes(nodes=2_000, services=200, peerings=20, instances=50, small_nodes=200,
                      small_batches=20, mutual_services=300)
    else:
        sizes = Sizes(nodes=10_000, services=1_000, peerings=100, instances=100,
                      small_nodes=500, small_batches=50, mutual_services=3_000)
    if args.mutual is not None:
        sizes.mutual_services = args.mutual
    out_path = args.json or (QUICK_RESULTS if args.quick else RESULTS)
    message = exported_message_sizes()
    batch_rule = batch_rule_check()
    cases = build_cases(sizes, message)
    if args.only:
        groups = set(args.only.split(","))
        cases = [c for c in cases if c.group in groups]
    if args.compare_python:
        cases += [Case(c.key + "@before", c.group, c.kind, c.params, python=args.compare_python)
                  for c in cases]
    machine = machine_info()  # at the start: its commit is the one the first case runs
    load_before = os.getloadavg()
    load_max = load_before[0]
    started = time.time()
    for number in range(rounds):
        shift = (number * 5) % len(cases)
        order = cases[shift:] + cases[:shift]
        for i, case in enumerate(order):
            out = run_case(case)
            out["round"] = number + 1
            case.runs.append(out)
            load_max = max(load_max, os.getloadavg()[0])
            main_value = out.get("virtual_seconds", out.get("wall_seconds", out.get(
                "seconds", out.get("delta_bytes"))))
            print(f"round {number + 1}/{rounds} [{i + 1}/{len(cases)}] {case.key:<30} "
                  f"{main_value}  ({out['process_seconds']} s, load "
                  f"{out['load_average_1min_before']})", file=sys.stderr)
    load_after = os.getloadavg()
    report: dict[str, Any] = {
        "benchmark": "impl_speed",
        "quick": args.quick,
        "rounds": rounds,
        "sizes": sizes.__dict__,
        "message_sizes": message,
        "command": " ".join([".venv/bin/python", "benchmarks/impl_speed.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "wall_seconds": round(time.time() - started, 1),
        "machine": machine,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "load_average_max_seen": round(load_max, 2),
        "how": (
            "every case in a fresh subprocess; rounds interleaved, the case order rotated by "
            "5 each round; times with time.perf_counter (CPU with time.process_time, all "
            "threads of the process); virtual time with trio.current_time under "
            "MockClock(autojump_threshold=0); heap with tracemalloc (current traced bytes "
            "after gc.collect) and RSS from /proc/self/status VmRSS, in separate processes"
        ),
        "batch_rule_check": batch_rule,
        "summary": {},
        "cases": {c.key: {"kind": c.kind, "params": c.params, "runs": c.runs} for c in cases},
        "json": str(out_path.relative_to(REPO)) if out_path.is_relative_to(REPO) else str(out_path),
    }
    report["summary"] = summarise(cases, sizes)
    # the cases run by --compare-python are another checkout on purpose: not a change mid-run
    versions = sorted({r["impl"] for c in cases if c.python == sys.executable for r in c.runs})
    report["impl_versions_measured"] = versions
    report["impl_changed_during_run"] = len(versions) > 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out_path)
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

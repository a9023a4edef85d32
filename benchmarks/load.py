"""Load: many peerings between two servers, a burst of exports both ways, then deleting them all.

Run from the repository root with the project's venv:

    .venv/bin/python benchmarks/load.py [--peerings P] [--services S] [--store sqlite|memory]
                                        [--json PATH]

Method (one process, real time, real gRPC on 127.0.0.1, the store ``peerkit serve`` uses by
default): two ``PeeringServer``s, dc1 and dc2, each with a store in a temporary directory.
dc1 generates P tokens (peer names ``b-000``...), dc2 establishes each (as ``a-000``...), and
every peering is waited for until both ends read ACTIVE. Then the export entries are written
(each side exports S service names to each of its P peers; no service registered yet, so
nothing moves), and the burst is timed from here: each side registers S services (one instance
each, straight into its store, one write per service), so each side must import S services from
each of its P peerings: P x S instances each way. *Converge* is the time until both sides hold
all of them (polled every 0.2 s). Then dc1 deletes every peering (one RPC each, back to back),
and *clean-up* is timed until dc1 has no rows and imports none, and every row of dc2 reads
TERMINATED with nothing imported. Peak memory is the process's ``ru_maxrss`` (both servers and
the benchmark in one process). Every ``peerkit`` log record at WARNING or above is counted and
the first few are kept.

Nothing is asserted; a phase that does not finish within ``--deadline`` seconds is reported as
such with what was reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import machine_info

from peerkit.impl.store import Node, Service
from peerkit.impl.store.memory import MemoryStore
from peerkit.impl.store.sqlite import SqliteStore
from peerkit.impl.testing import Cluster, running_cluster
from peerkit.impl.transport.grpc_bridge import GrpcTransport
from peerkit.model.vocabulary import PeeringState


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 5:
            self.first.append(f"{record.levelname} {record.getMessage()[:200]}")


async def _wait(predicate: Any, deadline: float) -> float | None:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > deadline:
            return None
        await trio.sleep(0.2)
    return time.perf_counter() - start


def _imported_total(c: Cluster, peers: list[str]) -> int:
    return sum(len(c.imported(p)) for p in peers)


def count_warnings() -> _Counter:
    """Count (and keep the first few of) the ``peerkit`` log records at WARNING or above."""
    counter = _Counter()
    logger = logging.getLogger("peerkit")
    logger.addHandler(counter)
    logger.setLevel(logging.WARNING)
    return counter


@asynccontextmanager
async def two_servers(tmp: str, store: str = "sqlite") -> AsyncIterator[tuple[Cluster, Cluster]]:
    """dc1 and dc2 serving over real gRPC on 127.0.0.1, each with its store under ``tmp``."""
    async with AsyncExitStack() as stack:
        transport = await stack.enter_async_context(GrpcTransport())
        stores = [SqliteStore(Path(tmp) / name) if store == "sqlite" else MemoryStore()
                  for name in ("dc1", "dc2")]
        for s in stores:
            stack.callback(s.close)
        dc1 = await stack.enter_async_context(
            running_cluster(transport, "dc1", "127.0.0.1:0", store=stores[0]))
        dc2 = await stack.enter_async_context(
            running_cluster(transport, "dc2", "127.0.0.1:0", store=stores[1]))
        yield dc1, dc2


async def run(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    peers_of_1 = [f"b-{i:03d}" for i in range(args.peerings)]  # dc1's names for dc2
    peers_of_2 = [f"a-{i:03d}" for i in range(args.peerings)]
    services = [f"svc-{i:03d}" for i in range(args.services)]
    out: dict[str, Any] = {}
    async with two_servers(tmp, args.store) as (dc1, dc2):
        start = time.perf_counter()
        for p1, p2 in zip(peers_of_1, peers_of_2, strict=True):
            token = await dc1.client.generate_token(p1)
            await dc2.client.establish(p2, token)
        waited = await _wait(lambda: all(dc1.state(p) is PeeringState.ACTIVE for p in peers_of_1)
                             and all(dc2.state(p) is PeeringState.ACTIVE for p in peers_of_2),
                             args.deadline)
        out["peer_all_seconds"] = None if waited is None else round(time.perf_counter() - start, 2)

        for cluster, peers in ((dc1, peers_of_1), (dc2, peers_of_2)):
            for service in services:
                for p in peers:
                    cluster.store.export_service(service, p)
        want = args.peerings * args.services
        start = time.perf_counter()
        for cluster in (dc1, dc2):
            for i, service in enumerate(services):
                node = f"{cluster.name}-node-{i:03d}"
                cluster.store.register_service(Node(name=node, address="10.0.0.1"),
                                               Service(id=f"{service}-1", name=service,
                                                       node=node, port=8000))
        converged = await _wait(lambda: _imported_total(dc1, peers_of_1) == want
                                and _imported_total(dc2, peers_of_2) == want, args.deadline)
        out["burst_instances_each_way"] = want
        out["converge_seconds"] = None if converged is None else round(converged, 2)
        out["imported_at_end"] = [_imported_total(dc1, peers_of_1),
                                  _imported_total(dc2, peers_of_2)]

        start = time.perf_counter()
        for p in peers_of_1:
            await dc1.client.peering_delete(p)
        cleaned = await _wait(
            lambda: not dc1.store.peering_list() and _imported_total(dc1, peers_of_1) == 0
            and all(dc2.state(p) is PeeringState.TERMINATED for p in peers_of_2)
            and _imported_total(dc2, peers_of_2) == 0, args.deadline)
        out["cleanup_seconds"] = None if cleaned is None else round(cleaned, 2)
        out["left_after_cleanup"] = {
            "dc1_rows": len(dc1.store.peering_list()),
            "dc1_imported": _imported_total(dc1, peers_of_1),
            "dc2_not_terminated": sum(dc2.state(p) is not PeeringState.TERMINATED
                                      for p in peers_of_2),
            "dc2_imported": _imported_total(dc2, peers_of_2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peerings", type=int, default=100)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "load.json")
    args = parser.parse_args()
    counter = count_warnings()
    with tempfile.TemporaryDirectory(prefix="peerkit-load-") as tmp:
        started = time.perf_counter()
        result = trio.run(run, args, tmp)
    result |= {
        "peerings": args.peerings, "services_per_side": args.services, "store": args.store,
        "total_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "log_warnings_or_worse": counter.count, "first_log_records": counter.first,
        "machine": machine_info(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""SIGKILL in the middle of an import or of a deletion, restart on the same data dir (issue 8).

Real ``peerkit serve`` processes over gRPC on 127.0.0.1, run under a wrapper that SIGKILLs its
own process inside a chosen store transaction, before the commit: the hardest place to die.

* Import: dc1 exports ``SERVICES`` services of ``INSTANCES`` instances each (nodes with a node
  check and a service check) to dc2; dc2 dies inside the SQLite transaction of its
  ``KILL_AT``-th service import, with half of that import's rows written (the Responses a
  stream end received together are imported in one transaction, ``StateStore.import_batch``).
  Afterwards the data dir must hold only
  whole imports (each service with all its instances, nodes and checks, or nothing of it; no
  node, service or check without its parent), the peering row as it was, and a restart on the
  same data dir must resume replication to completion.
* Deletion: dc1 dies half way through the deletion routine's batch transaction; the batch is
  all still there, the row still DELETING, and the restarted server finishes the deletion.

May import: pytest, trio, the standard library (subprocess, signal), peerkit.impl.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from peerkit.impl.client import PeerkitClient
from peerkit.impl.store import Check, Node, Service, SqliteStore, StateStore
from peerkit.impl.testing import imported_instances, running_cluster
from peerkit.impl.transport import MemoryNetwork
from peerkit.impl.transport.grpc_bridge import GrpcTransport
from peerkit.model.vocabulary import PeeringState

pytestmark = pytest.mark.grpc

SERVICES = 60
INSTANCES = 3
KILL_AT = 25  # dc2 dies inside its 25th service import (the bundle and list come first)
KILL_AFTER_ROWS = 2 * INSTANCES  # of the import's 4 * INSTANCES rows (node, service, 2 checks)
DEADLINE = 60.0  # real seconds for each wait (the whole test takes a few)

#: ``peerkit serve``, optionally dying inside the transaction of the Nth service import, half
#: way through its row writes: the wrapper lets the store's own import code run and SIGKILLs
#: the process after ``KILL_AFTER_ROWS`` rows of that import are written, before the commit
#: (the store's code is not changed, only wrapped, and only in this child process)
SERVE = """\
import argparse, os, signal, sys
from peerkit.impl import serve
from peerkit.impl.store import base
kill_at = int(os.environ.get("PEERKIT_TEST_KILL_AT_IMPORT", "0"))
kill_after_rows = int(os.environ.get("PEERKIT_TEST_KILL_AFTER_ROWS", "0"))
original = base.StateStore._replace_service
imports = 0
def replace_and_die(self, tx, peer_name, partition, service_name, merged, *rest):
    global imports
    if merged:
        imports += 1
        if imports == kill_at:
            put, written = tx.put, []
            def put_and_die(row):
                put(row)
                written.append(row)
                if len(written) == kill_after_rows:
                    os.kill(os.getpid(), signal.SIGKILL)
            tx.put = put_and_die
    return original(self, tx, peer_name, partition, service_name, merged, *rest)
base.StateStore._replace_service = replace_and_die
kill_at_node = int(os.environ.get("PEERKIT_TEST_KILL_AT_NODE_DELETE", "0"))
delete_node = base.StateStore._delete_node
nodes_deleted = 0
def delete_node_and_die(tx, peer_name, partition, name):
    global nodes_deleted
    nodes_deleted += 1
    if nodes_deleted == kill_at_node:
        os.kill(os.getpid(), signal.SIGKILL)
    return delete_node(tx, peer_name, partition, name)
base.StateStore._delete_node = staticmethod(delete_node_and_die)
p = argparse.ArgumentParser()
serve.add_arguments(p)
sys.exit(serve.run(p.parse_args(sys.argv[1:])))
"""


@contextmanager
def reopened(data_dir: Path) -> Iterator[SqliteStore]:
    """The data dir's store, open for the block (its lock is free once the server is gone)."""
    store = SqliteStore(data_dir)
    try:
        yield store
    finally:
        store.close()


def start(name: str, data_dir: Path, kill_at: int = 0,
          kill_at_node: int = 0) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PEERKIT_TEST_KILL_AT_IMPORT=str(kill_at),
               PEERKIT_TEST_KILL_AFTER_ROWS=str(KILL_AFTER_ROWS),
               PEERKIT_TEST_KILL_AT_NODE_DELETE=str(kill_at_node))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "--name", name, "--data-dir", str(data_dir),
         "--grpc-addr", "127.0.0.1:0", "--plaintext"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the server listens
    assert line.startswith(f"peerkit serve: {name} listening on "), line
    return proc, line.split(" listening on ")[1].split()[0]


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Every process started; each still running is stopped at the end, whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def export_services(data_dir: Path) -> None:
    """dc1's local catalog, written before its server starts."""
    with reopened(data_dir) as store:
        for i in range(SERVICES):
            name = f"svc-{i:03d}"
            for j in range(INSTANCES):
                node = f"node-{i:03d}-{j}"
                store.register_service(
                    Node(name=node, address=f"10.0.{i}.{j}"),
                    Service(id=f"{name}-{j}", name=name, port=8000 + j, node=node),
                    [Check(check_id="serfHealth", node=node),
                     Check(check_id=f"service:{name}-{j}", service_id=f"{name}-{j}", node=node)],
                )
            store.export_service(name, "dc2")


def check_imports_whole(store: StateStore) -> list[str]:
    """Every service imported from dc1 is whole and nothing imported is orphaned; return the
    names of the services imported."""
    dump = store.dump()
    nodes = {n.name for n in dump.nodes if n.peer_name == "dc1"}
    services = [s for s in dump.services if s.peer_name == "dc1"]
    checks = [c for c in dump.checks if c.peer_name == "dc1"]
    instances: dict[str, set[str]] = {}
    for s in services:
        assert s.node in nodes, f"service {s.id} on a node that is not there"
        instances.setdefault(s.name, set()).add(s.id)
    service_ids = {s.id for s in services}
    for c in checks:
        assert c.node in nodes, f"check {c.check_id} on a node that is not there"
        assert c.service_id in ("", *service_ids), f"check {c.check_id} of a missing service"
    for name, ids in instances.items():
        assert ids == {f"{name}-{j}" for j in range(INSTANCES)}, (name, sorted(ids))
    served = {s.node for s in services}
    assert nodes == served, f"nodes without a service: {sorted(nodes - served)}"
    assert len(checks) == 2 * len(services)  # a node check and a service check per instance
    return sorted(instances)


async def imported_count(address: str) -> int:
    async with GrpcTransport() as transport, PeerkitClient.connect(transport, address) as client:
        return len(await client.imported_services("dc1"))


async def wait_imported(address: str, count: int) -> None:
    with trio.fail_after(DEADLINE):
        while await imported_count(address) != count:
            await trio.sleep(0.1)  # polling another process: nothing to wait on but time


async def establish(dc1: str, dc2: str) -> None:
    async with GrpcTransport() as transport, \
            PeerkitClient.connect(transport, dc1) as client1, \
            PeerkitClient.connect(transport, dc2) as client2:
        token = await client1.generate_token("dc2")
        await client2.establish("dc1", token)


def test_sigkill_inside_an_import_leaves_whole_imports_and_replication_resumes(
    tmp_path: Path, procs: list[subprocess.Popen[str]],
) -> None:
    dir1, dir2 = tmp_path / "dc1", tmp_path / "dc2"
    export_services(dir1)
    dc1, address1 = start("dc1", dir1)
    procs.append(dc1)
    dc2, address2 = start("dc2", dir2, kill_at=KILL_AT)
    procs.append(dc2)
    trio.run(establish, address1, address2)
    assert dc2.wait(timeout=DEADLINE) == -signal.SIGKILL

    # what the killed process left: the imports committed before, whole; not the one it died
    # in, nor those received in the same batch as it (one transaction per received batch:
    # issue 10), so a prefix of the services, each whole
    with reopened(dir2) as store:  # the lock died with the process
        row = store.peering_read("dc1")
        assert row is not None and row.state is PeeringState.ESTABLISHING
        assert row.stream_secret and row.peer_server_addresses == (address1,)
        imported = check_imports_whole(store)
        assert len(imported) <= KILL_AT - 1
        assert imported == [f"svc-{i:03d}" for i in range(len(imported))]
        if imported:  # the bundle came before the first service, in that batch or earlier
            assert store.trust_bundle_read("dc1") is not None

    # the same data dir: the dialer redials and replication completes
    dc2, address2 = start("dc2", dir2)
    procs.append(dc2)
    trio.run(wait_imported, address2, SERVICES)
    stop(dc2)
    stop(dc1)
    with reopened(dir2) as store:
        assert check_imports_whole(store) == [f"svc-{i:03d}" for i in range(SERVICES)]
        row = store.peering_read("dc1")
        assert row is not None and row.state is PeeringState.ESTABLISHING


async def generate_token(data_dir: Path) -> None:
    """dc1's row for dc2 (PENDING), written by a server of its own on the data dir."""
    with reopened(data_dir) as store:
        async with running_cluster(MemoryNetwork(), "dc1", "dc1:8502", store=store) as dc1:
            await dc1.client.generate_token("dc2")


async def delete_peering(address: str) -> None:
    async with GrpcTransport() as transport, PeerkitClient.connect(transport, address) as client:
        await client.peering_delete("dc2")


async def wait_row_gone(address: str) -> None:
    async with GrpcTransport() as transport, PeerkitClient.connect(transport, address) as client:
        with trio.fail_after(DEADLINE):
            while await client.peering_read("dc2") is not None:
                await trio.sleep(0.1)  # polling another process


def test_sigkill_inside_a_deletion_batch_then_the_restart_finishes_it(
    tmp_path: Path, procs: list[subprocess.Popen[str]],
) -> None:
    """SIGKILL inside the deletion routine's batch transaction (half way through its nodes):
    the batch is all there after the restart, the row still DELETING; the restarted server
    deletes it all and then the row."""
    trio.run(generate_token, tmp_path)
    with reopened(tmp_path) as store:
        store.import_service_nodes("dc2", "default", "bulk", imported_instances("dc2", SERVICES))
    dc1, address = start("dc1", tmp_path, kill_at_node=SERVICES // 2)
    procs.append(dc1)
    trio.run(delete_peering, address)
    assert dc1.wait(timeout=DEADLINE) == -signal.SIGKILL
    with reopened(tmp_path) as store:
        row = store.peering_read("dc2")
        assert row is not None and row.state is PeeringState.DELETING
        assert len(store.imported_node_dump("dc2", "default")) == SERVICES  # none of the batch
    dc1, address = start("dc1", tmp_path)
    procs.append(dc1)
    trio.run(wait_row_gone, address)
    stop(dc1)
    with reopened(tmp_path) as store:
        assert store.peering_read("dc2") is None
        assert store.imported_node_dump("dc2", "default") == []
        assert store.trust_bundle_read("dc2") is None
        assert [n for n in store.dump().nodes if n.peer_name] == []

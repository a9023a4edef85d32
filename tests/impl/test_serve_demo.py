"""``peerkit serve`` and ``peerkit demo`` (impl/serve.py, impl/demo.py), and restarts on a data
dir: a half-finished deletion continues after a restart.

The serve tests run the real command in a subprocess (real gRPC on 127.0.0.1, port 0) and stop
it with SIGTERM; the demo runs in-process. The restart test uses SQLite under virtual time.

May import: pytest, trio, the standard library (subprocess), peerkit.impl, peerkit.model.vocabulary.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from peerkit.impl import demo, serve
from peerkit.impl.client import PeerkitClient
from peerkit.impl.store import SqliteStore
from peerkit.impl.testing import imported_instances, running_cluster, until
from peerkit.impl.transport import MemoryNetwork
from peerkit.impl.transport.grpc_bridge import GrpcTransport
from peerkit.model.vocabulary import PeeringState

SERVE = ("import sys, argparse\nfrom peerkit.impl import serve\np = argparse.ArgumentParser()\n"
         "serve.add_arguments(p)\nsys.exit(serve.run(p.parse_args(sys.argv[1:])))")
ONE_NODE_PER_BATCH = len("node-0000") + len("default") + len("dc2")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """demo/serve configure the ``peerkit`` logger; put it back for the other tests."""
    logger = logging.getLogger("peerkit")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# restart


async def test_restart_resumes_a_half_finished_deletion(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    net = MemoryNetwork()
    store = SqliteStore(tmp_path)
    async with running_cluster(net, "dc1", "dc1:8502", store=store,
                               deletion_batch_bytes=ONE_NODE_PER_BATCH) as dc1:
        await dc1.client.generate_token("dc2")
        store.import_service_nodes("dc2", "default", "bulk", imported_instances("dc2", 50))
        await dc1.client.peering_delete("dc2")
        await trio.sleep(1.05)  # virtual: 10 (burst) + 10 batches, then the server stops
    store.close()
    reopened = SqliteStore(tmp_path)
    row = reopened.peering_read("dc2")
    assert row is not None and row.state is PeeringState.DELETING
    assert len(reopened.imported_node_dump("dc2", "default")) == 30
    async with running_cluster(net, "dc1", "dc1:8502", store=reopened,
                               deletion_batch_bytes=ONE_NODE_PER_BATCH) as dc1:
        await until(reopened, lambda: reopened.peering_read("dc2") is None)
        term = dc1.server.leadership
        assert term is not None and term.deletion.stats.node_batches == 30
        assert reopened.imported_node_dump("dc2", "default") == []
    reopened.close()


# ---------------------------------------------------------------------------------------------
# peerkit serve


def test_serve_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(serve, ["--name", "dc1", "--data-dir", "x", "--grpc-addr", "nope"])
    assert serve.run(args) == 2
    assert "--grpc-addr must look like host:port" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(serve, ["--name", "dc1", "--data-dir", "x", "--grpc-addr", "a:1",
                      "--bug", "no-such-bug"])


def start_serve(data_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "--name", "dc1", "--data-dir", str(data_dir),
         "--grpc-addr", "127.0.0.1:0", "--plaintext", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the server listens
    assert line.startswith("peerkit serve: dc1 listening on "), line
    address = line.split(" listening on ")[1].split()[0]
    return proc, address


def stop_serve(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


async def call_server(address: str, peer_name: str, create: bool) -> list[str]:
    with trio.fail_after(30):
        async with GrpcTransport() as transport, PeerkitClient.connect(transport,
                                                                       address) as client:
            status = await client.status()
            assert (status.ServerName, status.IsLeader) == ("dc1", True)
            if create:
                await client.generate_token(peer_name)
            return [p.Name for p in await client.peering_list()]


@pytest.mark.grpc
def test_serve_runs_stops_on_sigterm_and_keeps_state(tmp_path: Path) -> None:
    proc, address = start_serve(tmp_path, "--log-level", "debug")
    try:
        assert trio.run(call_server, address, "dc2", True) == ["dc2"]
    finally:
        code, err = stop_serve(proc)
    assert code == 0
    assert '"msg": "signal received; shutting down"' in err
    assert "WARNING: historical bugs" not in err
    # the same data dir: the peering is still there
    proc, address = start_serve(tmp_path, "--bug", "stored-map")
    try:
        assert trio.run(call_server, address, "dc2", False) == ["dc2"]
    finally:
        code, err = stop_serve(proc)
    assert code == 0
    assert "WARNING: historical bugs are switched ON" in err and "stored-map" in err


# ---------------------------------------------------------------------------------------------
# peerkit demo


@pytest.mark.grpc
def test_demo(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    assert demo.run(parse(demo, ["--timeout", "30"])) == 0
    out = capsys.readouterr().out
    for expected in (
        "dc1 GenerateToken(dc2)",
        "the peer stream is up: dc1 reads ACTIVE, dc2 reads ACTIVE",
        "dc2 imported from dc1: api-1@node-a, api-2@node-b, web-1@node-a",
        "dc2 received Terminated on the stream: its row is TERMINATED",
        "dc1's deletion routine removed dc2's trust bundle, then dc1's row: gone",
        "dc2: peering dc1 TERMINATED (kept as a signal to the operator); imported data none",
        "done: the whole lifecycle was observed through the RPCs",
    ):
        assert expected in out
    assert "FAILED" not in out


# ---------------------------------------------------------------------------------------------
# peerkit serve: an address it cannot listen on


def _run_serve_once(data_dir: Path, grpc_addr: str) -> subprocess.CompletedProcess[str]:
    # a server that wrongly starts serving would hang here: the timeout ends the test (and kills
    # the child) instead of waiting for ever
    return subprocess.run(
        [sys.executable, "-c", SERVE, "--name", "dc1", "--data-dir", str(data_dir),
         "--grpc-addr", grpc_addr, "--plaintext"],
        capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.grpc
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_serve_on_a_taken_address_says_why_in_one_line(tmp_path: Path, host: str) -> None:
    """127.0.0.1:PORT is taken: ``serve`` on it, or on a name resolving to it, exits 1 with one
    line saying why, and does not fall back to listening on some other address of the name."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        done = _run_serve_once(tmp_path, f"{host}:{port}")
    assert done.returncode == 1, done
    assert "listening on" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("peerkit serve: cannot listen on "), lines
    assert f"127.0.0.1:{port}" in lines[0] and "address already in use" in lines[0], lines


@pytest.mark.grpc
def test_serve_on_a_name_that_does_not_resolve_fails_in_one_line(tmp_path: Path) -> None:
    done = _run_serve_once(tmp_path, "no-such-host.invalid:0")
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("peerkit serve: cannot listen on no-such-host.invalid:0: "), lines

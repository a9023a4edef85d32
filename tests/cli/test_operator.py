"""The operator's commands (`peerkit peering ...`, `peerkit services ...`, cli/operator.py)
against real servers over real gRPC on 127.0.0.1: two servers peered by hand, the documented
JSON keys, one line and exit 1 when the server is down, slow or refuses, exit 2 on bad usage.

The servers are ``PeeringServer``s in this test's trio run (ports picked by the OS, stopped
inside each test); the CLI's ``main`` runs in a worker thread, because it starts a trio run of
its own. Waits for replication are event-driven (``until`` / ``eventually`` re-check on every
store or tracker change) under a ``trio.fail_after`` bound; nothing sleeps. One test runs
``peerkit serve`` and the CLI as subprocesses, end to end.

May import: pytest, trio, the standard library, peerkit.cli, peerkit.impl (testing, transport).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from peerkit.cli import main
from peerkit.impl.testing import Cluster, eventually, running_cluster, until
from peerkit.impl.transport.grpc_bridge import GrpcTransport
from peerkit.model.vocabulary import PeeringState

pytestmark = pytest.mark.grpc
DEADLINE = 30
RPC_TIMEOUT = "10"  # each CLI call's own bound, inside DEADLINE

# The documented JSON keys (README, "The operator's command line"): scripts rely on them.
PEERING_KEYS = {"name", "id", "partition", "state", "meta", "peer_id", "peer_server_name",
                "peer_server_addresses", "peer_ca_pems", "imported_services",
                "exported_services", "deleted_at", "create_index", "modify_index"}
INSTANCE_KEYS = {"service", "id", "node", "address", "port", "tags", "health"}


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def cli_at(cluster: Cluster, *argv: str) -> tuple[int, str, str]:
    """Run the CLI against ``cluster`` in a worker thread (the test's trio run keeps serving)."""
    return await trio.to_thread.run_sync(cli, *argv, "--addr", cluster.address,
                                         "--timeout", RPC_TIMEOUT)


async def ok_at(cluster: Cluster, *argv: str) -> str:
    code, out, err = await cli_at(cluster, *argv)
    assert (code, err) == (0, ""), (argv, code, err)
    return out


@asynccontextmanager
async def servers(*names: str) -> AsyncIterator[list[Cluster]]:
    async with GrpcTransport() as transport:
        if len(names) == 1:
            async with running_cluster(transport, names[0], "127.0.0.1:0") as one:
                yield [one]
        else:
            async with running_cluster(transport, names[0], "127.0.0.1:0") as first, \
                    running_cluster(transport, names[1], "127.0.0.1:0") as second:
                yield [first, second]


def column_starts(table: str) -> list[list[int]]:
    """For each line of a table, where each cell starts (cells hold no double blanks)."""
    starts = []
    for line in table.splitlines():
        cells, position = [], 0
        for cell in line.split("  "):
            if cell.strip():
                cells.append(position + len(cell) - len(cell.lstrip()))
            position += len(cell) + 2
        starts.append(cells)
    return starts


def rows(table: str) -> list[list[str]]:
    """The table's cells, header first."""
    return [[cell.strip() for cell in line.split("  ") if cell.strip()]
            for line in table.splitlines()]


# ---------------------------------------------------------------------------------------------
# the walkthrough of README.md, in the test's own words


async def test_two_servers_peered_by_hand(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(DEADLINE):
        async with servers("dc1", "dc2") as (dc1, dc2):
            await ok_at(dc1, "services", "register", "web", "--node", "node-a", "--port", "80")
            await ok_at(dc1, "services", "register", "api", "--node", "node-b", "--port",
                        "8080", "--id", "api-1", "--tag", "v1")
            token = (await ok_at(dc1, "peering", "generate-token", "dc2")).strip()
            assert token and "\n" not in token  # the token alone, for TOKEN=$(...)

            monkeypatch.setattr(sys, "stdin", io.StringIO(token + "\n"))
            out = await ok_at(dc2, "peering", "establish", "dc1", "--token-file", "-")
            assert "Established peering dc1" in out
            await ok_at(dc1, "services", "export", "web", "--to", "dc2")
            await ok_at(dc1, "services", "export", "api", "--to", "dc2")

            await until(dc2.store, lambda: dc2.imported("dc1") == ["api", "web"])
            await eventually(lambda: dc1.connected("dc2") and dc2.connected("dc1"), dc1, dc2)
            imported = await ok_at(dc2, "services", "imported")
            assert rows(imported)[:3] == [
                ["Peer", "Service", "ID", "Node", "Port", "Health"],
                ["dc1", "api", "api-1", "node-b", "8080", "passing"],
                ["dc1", "web", "web", "node-a", "80", "passing"]]
            assert len(set(map(tuple, column_starts(imported)[:3]))) == 1  # aligned
            assert "Trust bundles held: dc1 (dc1.peerkit.local)" in imported

            listed = await ok_at(dc2, "peering", "list")
            assert rows(listed) == [
                ["Name", "State", "Imported Svcs", "Exported Svcs", "Remote Server"],
                ["dc1", "ACTIVE", "2", "0", "server.dc1.peerkit"]]
            assert column_starts(listed)[0] == column_starts(listed)[1]
            assert rows(await ok_at(dc1, "peering", "list"))[1] == ["dc2", "ACTIVE", "0", "2",
                                                                    "-"]
            detail = await ok_at(dc2, "peering", "read", "dc1")
            assert "State:        ACTIVE" in detail and f"    {dc1.address}" in detail

            out = await ok_at(dc1, "peering", "delete", "dc2")
            assert "Submitted peering dc2 for deletion" in out
            await until(dc1.store, lambda: dc1.row("dc2") is None)
            await until(dc2.store, lambda: dc2.state("dc1") is PeeringState.TERMINATED
                        and dc2.imported("dc1") == []
                        and dc2.store.trust_bundle_read("dc1") is None)
            assert await ok_at(dc1, "peering", "list") == "No peerings.\n"
            assert rows(await ok_at(dc2, "peering", "list"))[1][:2] == ["dc1", "TERMINATED"]
            assert await ok_at(dc2, "services", "imported") == "No imported services.\n"
            code, out, err = await cli_at(dc1, "peering", "read", "dc2")
            assert (code, out) == (1, "")
            assert err == (f"peerkit peering read: no peering named 'dc2' on the server at "
                           f"{dc1.address}\n")


async def test_json_documents_have_the_documented_keys(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with servers("dc1") as (dc1,):
            registered = json.loads(await ok_at(dc1, "services", "register", "web", "--node",
                                                "n1", "--port", "80", "--tag", "a", "--json"))
            assert registered == {"service": "web", "service_id": "web", "node": "n1",
                                  "port": 80, "tags": ["a"]}
            generated = json.loads(await ok_at(dc1, "peering", "generate-token", "dc2",
                                               "--meta", "env=test", "--json"))
            assert set(generated) == {"peer_name", "token"} and generated["peer_name"] == "dc2"
            exported = json.loads(await ok_at(dc1, "services", "export", "web", "--to", "dc2",
                                              "--json"))
            assert exported == {"service": "web", "peer_name": "dc2"}

            peering = json.loads(await ok_at(dc1, "peering", "read", "dc2", "--json"))["peering"]
            assert set(peering) == PEERING_KEYS
            assert (peering["state"], peering["meta"], peering["exported_services"],
                    peering["deleted_at"]) == ("PENDING", {"env": "test"}, 1, None)
            listed = json.loads(await ok_at(dc1, "peering", "list", "--json"))
            assert listed == {"peerings": [peering]}
            assert json.loads(await ok_at(dc1, "services", "imported", "--json")) == {
                "imports": []}

            assert json.loads(await ok_at(dc1, "services", "unexport", "web", "--from", "dc2",
                                          "--json")) == {"service": "web", "peer_name": "dc2"}
            await ok_at(dc1, "services", "register", "web", "--node", "n2", "--id", "web-2")
            one = json.loads(await ok_at(dc1, "services", "deregister", "--id", "web-2",
                                         "--json"))
            assert one == {"service": None, "service_id": "web-2", "removed": 1}
            deregistered = json.loads(await ok_at(dc1, "services", "deregister", "web",
                                                  "--json"))
            assert deregistered == {"service": "web", "service_id": None, "removed": 1}
            assert json.loads(await ok_at(dc1, "peering", "delete", "dc2", "--json")) == {
                "peer_name": "dc2"}
            await until(dc1.store, lambda: dc1.row("dc2") is None)
            assert json.loads(await ok_at(dc1, "peering", "list", "--json")) == {"peerings": []}


async def test_imported_json_lists_instances_per_peer(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with servers("dc1", "dc2") as (dc1, dc2):
            await ok_at(dc1, "services", "register", "web", "--node", "n1", "--port", "80")
            await ok_at(dc1, "services", "export", "web", "--to", "dc2")
            token = (await ok_at(dc1, "peering", "generate-token", "dc2")).strip()
            (tmp_path / "token").write_text(token + "\n")
            await ok_at(dc2, "peering", "establish", "dc1", "--token-file",
                        str(tmp_path / "token"))
            await until(dc2.store, lambda: dc2.imported("dc1") == ["web"]
                        and dc2.store.trust_bundle_read("dc1") is not None)
            document = json.loads(await ok_at(dc2, "services", "imported", "--peer", "dc1",
                                              "--json"))
            [entry] = document["imports"]
            assert set(entry) == {"peer_name", "trust_domain", "instances"}
            assert (entry["peer_name"], entry["trust_domain"]) == ("dc1", "dc1.peerkit.local")
            [instance] = entry["instances"]
            assert set(instance) == INSTANCE_KEYS
            assert (instance["service"], instance["node"], instance["port"],
                    instance["health"]) == ("web", "n1", 80, "passing")
            other = json.loads(await ok_at(dc2, "services", "imported", "--peer", "dc9",
                                           "--json"))
            assert other == {"imports": []}


# ---------------------------------------------------------------------------------------------
# failures: one line on stderr, no traceback


def free_port() -> int:
    """A port nobody listens on (bound, then released: the OS does not hand it out again at
    once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_server_down_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("PEERKIT_ADDR", address)  # the default when --addr is not given
    code, out, err = cli("peering", "list")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"peerkit peering list: cannot reach the server at {address}: "
                          "UNAVAILABLE: ")
    assert "Connection refused" in err


def test_a_server_that_never_answers_times_out_with_exit_1() -> None:
    with socket.socket() as listener:  # accepts connections (the kernel's backlog), never reads
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        code, out, err = cli("services", "imported", "--addr", address, "--timeout", "0.5")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(f"peerkit services imported: no answer from the server at {address} "
                          "within 0.5 s (DEADLINE_EXCEEDED")


async def test_a_refused_rpc_shows_the_status_code_and_the_servers_message() -> None:
    with trio.fail_after(DEADLINE):
        async with servers("dc1") as (dc1,):
            code, out, err = await cli_at(dc1, "peering", "generate-token", "DC2")
            assert (code, out) == (1, "")
            assert err == (f"peerkit peering generate-token: the server at {dc1.address} "
                           "refused: INVALID_ARGUMENT: PeerName 'DC2' is not valid: a peer name "
                           "is a DNS label of 1-63 lowercase letters, digits or '-', starting "
                           "and ending with a letter or digit\n")
            code, _, err = await cli_at(dc1, "peering", "establish", "dc9", "--token", "junk")
            assert code == 1 and "refused: INVALID_ARGUMENT: " in err and err.count("\n") == 1


@pytest.fixture
def token_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "token"
    path.write_text("  \n")
    yield path


@pytest.mark.parametrize(("argv", "says"), [
    (["peering", "read", ""], "argument NAME: a name must not be empty"),
    (["peering", "delete", "a b"], "'a b' is not a name"),
    (["services", "register", "web", "--node", "n1", "--port", "65536"],
     "port must be a whole number from 0 to 65535, got '65536'"),
    (["services", "register", "web", "--node", "n1", "--port", "eighty"], "got 'eighty'"),
    (["services", "register", "web"], "the following arguments are required: --node"),
    (["services", "export", "web"], "the following arguments are required: --to"),
    (["services", "deregister"], "one of the arguments SERVICE --id is required"),
    (["peering", "establish", "dc1"], "one of the arguments --token --token-file is required"),
    (["peering", "establish", "dc1", "--token-file", "/nonexistent/token"],
     "cannot read --token-file /nonexistent/token: No such file or directory"),
    (["peering", "establish", "dc1", "--token-file", "TOKEN_FILE"], "the peering token is empty"),
    (["peering", "generate-token", "dc2", "--meta", "novalue"], "meta must look like key=value"),
    (["peering", "list", "--timeout", "0"], "must be a finite positive number"),
    (["peering", "list", "--timeout", "nan"], "must be a finite positive number"),
    (["peering", "list", "--timeout", "inf"], "must be a finite positive number"),
    (["peering", "list", "--timeout", "1e300"], "must be at most 3600 seconds"),
    (["peering", "list", "--addr", "nohost"], "--addr must look like host:port"),
    (["peering", "list", "--addr", "h:99999"], "--addr must look like host:port"),
])
def test_bad_usage_is_one_line_and_exit_2(argv: list[str], says: str, token_file: Path) -> None:
    argv = [str(token_file) if a == "TOKEN_FILE" else a for a in argv]
    code, out, err = cli(*argv)
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1 and err.startswith(f"peerkit {argv[0]} {argv[1]}: "), err
    assert says in err


def test_an_empty_token_on_stdin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    code, out, err = cli("peering", "establish", "dc1", "--token", "-")
    assert (code, out, err) == (2, "", "peerkit peering establish: the peering token is empty\n")


def test_a_bad_address_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERKIT_ADDR", "8502")
    code, _, err = cli("services", "imported")
    assert code == 2
    assert err == ("peerkit services imported: PEERKIT_ADDR must look like host:port (e.g. "
                   "127.0.0.1:8502), got '8502'\n")


# ---------------------------------------------------------------------------------------------
# end to end: `peerkit serve` and the CLI as the processes an operator runs


def peerkit(*argv: str, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peerkit", *argv], capture_output=True,
                          text=True, env=env, input=stdin, timeout=DEADLINE)


def test_end_to_end_against_peerkit_serve(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "peerkit", "serve", "--name", "dc1", "--data-dir",
         str(tmp_path / "dc1"), "--grpc-addr", "127.0.0.1:0", "--plaintext", "--log-level",
         "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # printed once the server listens
        assert line.startswith("peerkit serve: dc1 listening on "), line
        address = line.split(" listening on ")[1].split()[0]
        env = {**os.environ, "PEERKIT_ADDR": address}
        done = peerkit("peering", "generate-token", "dc2", env=env)
        assert (done.returncode, done.stderr) == (0, "") and done.stdout.strip()
        done = peerkit("peering", "list", "--json", env=env)
        assert done.returncode == 0
        [row] = json.loads(done.stdout)["peerings"]
        assert (row["name"], row["state"]) == ("dc2", "PENDING")
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=DEADLINE)
    assert server.returncode == 0
    done = peerkit("peering", "list", env=env)  # the server is gone now
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"cannot reach the server at {address}: UNAVAILABLE" in done.stderr


def test_readme_documents_every_json_key() -> None:
    """The keys a script may rely on are the ones README.md lists: a key added or renamed in
    cli/operator_views.py without the README fails here."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("**The operator's commands**", 1)[1].split("### Peering two", 1)[0]
    for key in PEERING_KEYS | INSTANCE_KEYS | {"peerings", "peering", "imports", "peer_name",
                                               "trust_domain", "instances", "token",
                                               "service_id", "removed"}:
        assert f"`{key}`" in section or f'"{key}"' in section, key

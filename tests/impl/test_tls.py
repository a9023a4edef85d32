"""TLS between servers, as upstream: tokens carry the acceptor's CA and ServerName, the dialer
verifies the acceptor with them, plaintext only when asked for.

One job: hold the implementation to specs/security.md over REAL gRPC on 127.0.0.1 (ports picked
by the OS, every server stopped inside its test): the whole lifecycle over TLS; a token whose CA
did not sign the acceptor's certificate, or whose ServerName the certificate does not carry,
fails both the Establish exchange and the dialer's stream (no ACTIVE peering, the error logged);
a TLS-only server refuses plaintext clients; ``peerkit serve`` runs TLS or, only with
``--plaintext``, plaintext. Each test makes its own CA and certificates (``cryptography``, EC
P-256: fast); no key is ever written outside the test's tmp_path.

May import: pytest, trio, cryptography, peerkit.cli (main), peerkit.impl (codec, server, serve,
store, testing, transport incl. grpc_bridge), peerkit.model.vocabulary.
"""

from __future__ import annotations

import argparse
import datetime
import io
import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from peerkit.cli import main
from peerkit.impl import serve
from peerkit.impl.client import PeerkitClient
from peerkit.impl.codec import decode_token, encode_token
from peerkit.impl.server import PeeringTLS
from peerkit.impl.store import Peering
from peerkit.impl.testing import Cluster, fields, peer, running_cluster, until
from peerkit.impl.transport import ClientTLS, ServerTLS, StatusCode, StreamFailed
from peerkit.impl.transport.grpc_bridge import GrpcTransport
from peerkit.model.vocabulary import PeeringState

pytestmark = pytest.mark.grpc
DEADLINE = 30
LOCAL = "127.0.0.1:0"
SERVE = ("import sys, argparse\nfrom peerkit.impl import serve\np = argparse.ArgumentParser()\n"
         "serve.add_arguments(p)\nsys.exit(serve.run(p.parse_args(sys.argv[1:])))")


# ---------------------------------------------------------------------------------------------
# a test PKI


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1))


def make_ca(common_name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert)


def issue(ca: Authority, dns_name: str) -> ServerTLS:
    """A server certificate for ``dns_name`` signed by ``ca``, with its key (both PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ServerTLS(cert_chain_pem=cert.public_bytes(serialization.Encoding.PEM),
                     private_key_pem=key_pem)


def server_name(dc: str) -> str:
    return serve.default_server_name(dc)


def tls_for(ca: Authority, dc: str) -> PeeringTLS:
    return PeeringTLS(identity=issue(ca, server_name(dc)), ca_pems=(ca.pem,),
                      server_name=server_name(dc))


@pytest.fixture(scope="module")
def ca1() -> Authority:
    return make_ca("peerkit test CA dc1")


@pytest.fixture(scope="module")
def ca2() -> Authority:
    return make_ca("peerkit test CA dc2")


@pytest.fixture
async def transport() -> AsyncIterator[GrpcTransport]:
    async with GrpcTransport() as t:
        yield t


@asynccontextmanager
async def tls_clusters(transport: GrpcTransport, tls1: PeeringTLS | None,
                       tls2: PeeringTLS | None) -> AsyncIterator[tuple[Cluster, Cluster]]:
    async with AsyncExitStack() as stack:
        dc1 = await stack.enter_async_context(running_cluster(transport, "dc1", LOCAL, tls=tls1))
        dc2 = await stack.enter_async_context(running_cluster(transport, "dc2", LOCAL, tls=tls2))
        yield dc1, dc2


# ---------------------------------------------------------------------------------------------
# (1) the whole lifecycle over TLS


async def test_the_whole_lifecycle_over_tls(transport: GrpcTransport, ca1: Authority,
                                            ca2: Authority) -> None:
    with trio.fail_after(DEADLINE):
        async with tls_clusters(transport, tls_for(ca1, "dc1"), tls_for(ca2, "dc2")) as (
                dc1, dc2):
            token = decode_token(await dc1.client.generate_token("probe"))
            assert token.ca == (ca1.pem,)
            assert token.server_name == "server.dc1.peering.peerkit"
            await peer(dc1, dc2)  # replicate services both ways, over TLS
            row2 = dc2.row("dc1")
            assert row2 is not None
            assert (row2.peer_ca_pems, row2.peer_server_name) == ((ca1.pem,), token.server_name)
            assert dc2.state("dc1") is PeeringState.ACTIVE
            # the acceptor deletes: the dialer is told (Terminated) and cleans up, over TLS
            await dc1.client.peering_delete("dc2")
            await until(dc1.store, lambda: dc1.row("dc2") is None)
            await until(dc2.store, lambda: dc2.imported("dc1") == []
                        and dc2.store.trust_bundle_read("dc1") is None
                        and dc2.state("dc1") is PeeringState.TERMINATED)


# ---------------------------------------------------------------------------------------------
# (2), (3) a token the acceptor's certificate does not match


@pytest.mark.parametrize("mismatch", ["wrong-ca", "wrong-server-name"])
async def test_a_token_that_does_not_match_the_acceptor_fails_verification(
    transport: GrpcTransport, ca1: Authority, ca2: Authority, mismatch: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="peerkit")
    with trio.fail_after(DEADLINE):
        async with tls_clusters(transport, tls_for(ca1, "dc1"), tls_for(ca2, "dc2")) as (
                dc1, dc2):
            good = decode_token(await dc1.client.generate_token("dc2"))
            bad = (replace(good, ca=(ca2.pem,)) if mismatch == "wrong-ca"
                   else replace(good, server_name="server.elsewhere.peering.peerkit"))
            # Establish's secret exchange dials with the token's TLS, and fails
            with pytest.raises(StreamFailed) as info:
                await dc2.client.establish("dc1", encode_token(bad))
            assert info.value.code is StatusCode.UNAVAILABLE
            assert "failed to exchange the establishment secret" in info.value.message
            assert dc2.row("dc1") is None
            # the dialer with that CA / name (a row as Establish would write it) never connects
            dc2.store.peering_write(Peering(
                name="dc1", peer_id=good.peer_id, peer_server_addresses=(dc1.address,),
                peer_ca_pems=bad.ca or (), peer_server_name=bad.server_name,
                stream_secret="never-checked: TLS fails first"))
            await until_logged(caplog, "error managing peering stream")
            assert dc2.state("dc1") is not PeeringState.ACTIVE
            assert not dc1.connected("dc2")
            errors = [fields(r).get("error", "") for r in caplog.records
                      if r.getMessage() == "error managing peering stream"]
            assert "UNAVAILABLE" in errors[0]


async def until_logged(caplog: pytest.LogCaptureFixture, message: str) -> None:
    # the dialer logs its failure and backs off; nothing in the store changes, so poll the log
    while not any(r.getMessage() == message for r in caplog.records):
        await trio.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# (4) plaintext only when asked for; a TLS-only server refuses plaintext


async def test_a_tls_server_refuses_plaintext_clients_and_dialers(
    transport: GrpcTransport, ca1: Authority
) -> None:
    with trio.fail_after(DEADLINE):
        async with tls_clusters(transport, tls_for(ca1, "dc1"), None) as (dc1, dc2):
            assert dc2.server.tls is None
            assert decode_token(await dc2.client.generate_token("x")).ca is None
            async with PeerkitClient.connect(transport, dc1.address, timeout=10) as plain:
                with pytest.raises(StreamFailed) as info:
                    await plain.status()
                assert info.value.code is StatusCode.UNAVAILABLE
            stripped = replace(decode_token(await dc1.client.generate_token("dc2")), ca=None)
            with pytest.raises(StreamFailed) as info:
                await dc2.client.establish("dc1", encode_token(stripped))
            assert info.value.code is StatusCode.UNAVAILABLE
            assert "the token carries no CA" in info.value.message
            assert dc2.row("dc1") is None


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(argv)


def write_pki(tmp_path: Path, ca: Authority, dc: str) -> dict[str, Path]:
    identity = issue(ca, server_name(dc))
    paths = {"cert": tmp_path / "server.pem", "key": tmp_path / "server-key.pem",
             "ca": tmp_path / "ca.pem"}
    paths["cert"].write_bytes(identity.cert_chain_pem)
    paths["key"].write_bytes(identity.private_key_pem)
    paths["ca"].write_text(ca.pem)
    return paths


@pytest.mark.parametrize(("extra", "reason"), [
    ([], "choose the transport security"),
    (["--tls-cert", "c.pem"], "missing --tls-key, --tls-ca"),
    (["--plaintext", "--tls-ca", "ca.pem"], "cannot be combined"),
    (["--plaintext", "--tls-server-name", "x"], "cannot be combined"),
])
def test_serve_needs_tls_or_an_explicit_plaintext(
    extra: list[str], reason: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # the data dir is a file: were the usage let through, the command would fail to open it
    # (exit 1) at once instead of serving for ever
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    args = parse(["--name", "dc1", "--data-dir", str(blocker), "--grpc-addr", LOCAL, *extra])
    assert serve.run(args) == 2
    assert reason in capsys.readouterr().err


def test_serve_refuses_tls_files_it_cannot_use(
    ca1: Authority, ca2: Authority, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    paths = write_pki(tmp_path, ca1, "dc1")
    other_key = issue(ca2, "x").private_key_pem
    (tmp_path / "other-key.pem").write_bytes(other_key)
    blocker = tmp_path / "not-a-dir"  # as above: a let-through would exit 1, never serve
    blocker.write_text("")
    base = ["--name", "dc1", "--data-dir", str(blocker), "--grpc-addr", LOCAL,
            "--tls-cert", str(paths["cert"]), "--tls-ca", str(paths["ca"])]
    assert serve.run(parse([*base, "--tls-key", str(tmp_path / "other-key.pem")])) == 2
    err = capsys.readouterr().err
    assert "do not make a usable pair" in err
    assert "PRIVATE KEY" not in err and other_key.decode() not in err
    assert serve.run(parse([*base, "--tls-key", str(tmp_path / "missing.pem")])) == 1
    assert "cannot read --tls-key" in capsys.readouterr().err
    assert serve.run(parse([*base[:-2], "--tls-ca", str(paths["key"]),
                            "--tls-key", str(paths["key"])])) == 2
    assert "--tls-ca" in capsys.readouterr().err
    (tmp_path / "five-cas.pem").write_text("".join(make_ca(f"ca{i}").pem for i in range(5)))
    assert serve.run(parse([*base[:-2], "--tls-ca", str(tmp_path / "five-cas.pem"),
                            "--tls-key", str(paths["key"])])) == 2
    assert "does not fit a peering token" in capsys.readouterr().err


def test_a_ca_bundle_becomes_one_token_entry_per_certificate(
    ca1: Authority, ca2: Authority, tmp_path: Path
) -> None:
    paths = write_pki(tmp_path, ca1, "dc1")
    paths["ca"].write_text(ca1.pem + ca2.pem)  # a root and one being rotated in
    tls = serve.load_tls(parse(["--name", "dc1", "--data-dir", "d", "--grpc-addr", LOCAL,
                                "--tls-cert", str(paths["cert"]), "--tls-key", str(paths["key"]),
                                "--tls-ca", str(paths["ca"])]))
    assert tls.ca_pems == (ca1.pem, ca2.pem)


def test_serve_with_tls_end_to_end(ca1: Authority, tmp_path: Path) -> None:
    paths = write_pki(tmp_path, ca1, "dc1")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "--name", "dc1", "--data-dir", str(tmp_path / "d"),
         "--grpc-addr", LOCAL, "--tls-cert", str(paths["cert"]), "--tls-key",
         str(paths["key"]), "--tls-ca", str(paths["ca"]), "--log-level", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("peerkit serve: dc1 listening on "), line
        assert line.rstrip().endswith("; TLS as server.dc1.peering.peerkit)"), line
        address = line.split(" listening on ")[1].split()[0]

        async def generate() -> str:
            with trio.fail_after(DEADLINE):
                async with GrpcTransport() as t, PeerkitClient.connect(
                        t, address, tls=ClientTLS((ca1.pem,), server_name("dc1"))) as client:
                    return await client.generate_token("dc2")

        token = decode_token(trio.run(generate))
        assert token.ca == (ca1.pem,) and token.server_name == "server.dc1.peering.peerkit"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0
    assert "PRIVATE KEY" not in err  # the key never reaches the log


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def test_the_operator_commands_speak_tls_with_ca_file(
    transport: GrpcTransport, ca1: Authority, ca2: Authority, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PEERKIT_CACERT", raising=False)
    monkeypatch.delenv("PEERKIT_TLS_SERVER_NAME", raising=False)
    (tmp_path / "ca1.pem").write_text(ca1.pem)
    (tmp_path / "ca2.pem").write_text(ca2.pem)
    with trio.fail_after(DEADLINE):
        async with running_cluster(transport, "dc1", LOCAL, tls=tls_for(ca1, "dc1")) as dc1:
            def at(*argv: str) -> tuple[int, str, str]:
                return cli("peering", "list", "--addr", dc1.address, "--timeout", "10", *argv)

            name = ("--tls-server-name", server_name("dc1"))
            assert await trio.to_thread.run_sync(
                at, "--ca-file", str(tmp_path / "ca1.pem"), *name) == (0, "No peerings.\n", "")
            for argv in ((), ("--ca-file", str(tmp_path / "ca2.pem"), *name)):
                code, _, err = await trio.to_thread.run_sync(at, *argv)
                assert code == 1 and f"cannot reach the server at {dc1.address}" in err, argv
            code, _, err = await trio.to_thread.run_sync(at, *name)
            assert code == 2 and "--tls-server-name needs --ca-file" in err

"""``peerkit serve``: run one peerkit server on a SQLite data dir over real gRPC until stopped.

One job: the command-line entry of a single server. ``add_arguments(parser)`` declares
``--name``, ``--data-dir``, ``--grpc-addr``, ``--advertise-addr``, the transport security
(``--tls-cert FILE --tls-key FILE --tls-ca FILE [--tls-server-name NAME]``, or ``--plaintext``),
``--bug NAME`` (repeatable), ``--test-hooks``, ``--log-level`` and ``--cpu N`` (the whole
process on one CPU, opt-in: see its help); ``run(args)`` serves until
Ctrl-C or SIGTERM and returns the exit code (0 after a clean shutdown, 1 when it cannot listen
(one line saying why, e.g. ``address already in use``), the data dir cannot be opened or a TLS
file cannot be read, 2 for bad arguments). A host name in ``--grpc-addr`` means every address
it resolves to: all are bound, or none and the command fails.

Transport security is chosen explicitly, never by default: the three ``--tls-*`` files (the
server listens with TLS only and its tokens carry the CA and ``--tls-server-name``), or
``--plaintext``; neither, or both, is a usage error (exit 2). Upstream refuses to generate
peering tokens without gRPC TLS; peerkit keeps plaintext for tests and demos, on request only.

The server is the leader from the start, keeps its state in ``<data-dir>/peerkit-state.sqlite``
(so a restart on the same data dir resumes, e.g. a half-finished deletion continues), and logs
one JSON object per line on stderr. It prints one line on stdout once it listens:
``peerkit serve: <name> listening on <address> (advertised as <address>)``. Bugs are never on
unless ``--bug`` names them, and then a loud warning is printed first. The test hooks
(TestHookService: ResetStream, Failover, HoldDeletion, HoldReceive, DeletionRoutines) answer
FailedPrecondition unless ``--test-hooks`` is given, and then a warning is printed first: they
let any client cut streams, depose the leader and stall deletions and stream reads
(specs/security.md).

May import: the standard library, trio, ``peerkit.model.vocabulary`` and the sibling modules of
``peerkit.impl`` (the gRPC transport included).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sqlite3
import ssl
import sys
from pathlib import Path
from typing import Final

import trio

from peerkit.model.vocabulary import BUGS, validate_bugs

from .codec import (
    MAX_TOKEN_CAS,
    MAX_TOKEN_STRING_CHARS,
    address_problem,
    is_pem_certificates,
)
from .logs import EventLog, configure_logging
from .server import PeeringServer, PeeringTLS
from .store import SqliteStore, StoreFailure, StoreOpenError
from .transport import ListenError, ServerTLS
from .transport.grpc_bridge import GrpcTransport

__all__ = ["add_arguments", "run"]

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
SHUTDOWN_GRACE: Final = 2.0
_PEM_BLOCK: Final = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                               re.DOTALL)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="this cluster's name, e.g. dc1")
    parser.add_argument("--data-dir", required=True, help="directory for the SQLite state")
    parser.add_argument("--grpc-addr", required=True,
                        help="host:port to listen on, e.g. 127.0.0.1:8502 (port 0: any)")
    parser.add_argument("--advertise-addr", default=None,
                        help="host:port put into peering tokens (default: the listen address)")
    tls = parser.add_argument_group(
        "transport security", "either all three --tls-* files, or --plaintext")
    tls.add_argument("--tls-cert", metavar="FILE",
                     help="this server's certificate (PEM; may hold the chain)")
    tls.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    tls.add_argument("--tls-ca", metavar="FILE",
                     help="the CA certificate(s) that signed it (PEM); put into peering tokens")
    tls.add_argument("--tls-server-name", metavar="NAME", default=None,
                     help="the name the certificate carries, put into tokens as ServerName "
                          "(default: server.<name>.peering.peerkit)")
    tls.add_argument("--plaintext", action="store_true",
                     help="listen and dial without TLS (tests and demos only)")
    parser.add_argument("--bug", action="append", default=[], metavar="NAME",
                        choices=sorted(BUGS),
                        help="switch on a historical bug (repeatable): " + ", ".join(sorted(BUGS)))
    parser.add_argument("--test-hooks", action="store_true",
                        help="enable the control service's TestHookService (ResetStream, "
                             "Failover, HoldDeletion, HoldReceive, DeletionRoutines) for the "
                             "conformance suite: anyone who can reach the port can then cut "
                             "peer streams, depose the leader and stall deletions and streams; "
                             "never in production")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.add_argument("--cpu", type=_cpu_number, default=None, metavar="N",
                        help="run the whole process on CPU N only, as `taskset -c N` does "
                             "(Linux). The trio thread and gRPC's asyncio thread hand one GIL "
                             "back and forth per message; on one CPU that is cheaper. Measured "
                             "on a 2-core VM: replication with the SQLite store at 0.60 of a "
                             "plain grpc.aio echo instead of 0.45 (README, replication). The "
                             "server then cannot use another CPU when that one is busy.")


def _cpu_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise argparse.ArgumentTypeError(f"a CPU number (0, 1, ...), got {text!r}")
    return int(text)


def pin_to_cpu(cpu: int) -> str | None:
    """Run every thread of this process, and the threads it starts later, on CPU `cpu` only.
    Returns a problem to report instead, changing nothing."""
    if not hasattr(os, "sched_setaffinity"):
        return "--cpu needs a system with sched_setaffinity (Linux)"
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed:
        return (f"--cpu {cpu}: this process may only run on CPU "
                f"{', '.join(map(str, sorted(allowed)))}")
    # sched_setaffinity(0) sets the calling thread's mask, which threads started later
    # inherit; threads already running (none are expected before trio starts, but an
    # imported library may have started one) are pinned one by one through /proc
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = []
    for tid in (0, *threads):
        with contextlib.suppress(ProcessLookupError):  # a thread that has ended meanwhile
            os.sched_setaffinity(tid, {cpu})
    return None


def _check_address(value: str, what: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return f"{what} must look like host:port, got {value!r}"
    return None


class _TLSFileError(Exception):
    """A --tls-* file that cannot be read (exit 1)."""


def default_server_name(name: str) -> str:
    """The default ``--tls-server-name``: upstream's form ``server.<dc>.peering.<trust
    domain>`` (``connect.PeeringServerSAN``) with peerkit as the trust domain."""
    return f"server.{name}.peering.peerkit"


def _tls_usage_problem(args: argparse.Namespace) -> str | None:
    files = {"--tls-cert": args.tls_cert, "--tls-key": args.tls_key, "--tls-ca": args.tls_ca}
    given = [flag for flag, value in files.items() if value is not None]
    if args.plaintext and (given or args.tls_server_name is not None):
        return "--plaintext cannot be combined with --tls-* options"
    if args.plaintext:
        return None
    if not given:
        return ("choose the transport security: --tls-cert FILE --tls-key FILE --tls-ca FILE, "
                "or --plaintext")
    missing = [flag for flag, value in files.items() if value is None]
    if missing:
        return f"TLS needs --tls-cert, --tls-key and --tls-ca; missing {', '.join(missing)}"
    name = args.tls_server_name
    if name is not None and (not name or not name.isascii() or not name.isprintable()
                             or " " in name):
        return f"--tls-server-name {name!r} is not a host name"
    return None


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _TLSFileError(f"cannot read {flag} {path!r}: "
                            f"{(exc.strerror or str(exc)).lower()}") from None


def load_tls(args: argparse.Namespace) -> PeeringTLS:
    """The server's TLS from the --tls-* files. Raises _TLSFileError (cannot read) or
    ValueError (not usable), naming the file, never its contents (a key must not be echoed)."""
    cert = _read("--tls-cert", args.tls_cert)
    key = _read("--tls-key", args.tls_key)
    ca = _read("--tls-ca", args.tls_ca)
    for flag, data in (("--tls-cert", cert), ("--tls-ca", ca)):
        if not is_pem_certificates(data.decode("ascii", "replace")):
            raise ValueError(f"{flag} {getattr(args, flag[2:].replace('-', '_'))!r} holds no "
                             "PEM certificate (or something else besides)")
    # the stdlib's TLS loads the pair the way a TLS server will: it refuses a key that is not
    # the certificate's, which gRPC would only report at the first handshake
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except ssl.SSLError as exc:
        raise ValueError(f"--tls-cert {args.tls_cert!r} and --tls-key {args.tls_key!r} do not "
                         f"make a usable pair: {exc.reason or exc}") from None
    # one token CA entry per certificate, as upstream's one PEM per root; each must pass the
    # peer's token bounds, or every token this server makes would be refused
    ca_pems = tuple(block + "\n" for block in _PEM_BLOCK.findall(ca.decode("ascii")))
    if len(ca_pems) > MAX_TOKEN_CAS or any(len(p) > MAX_TOKEN_STRING_CHARS for p in ca_pems):
        raise ValueError(f"--tls-ca {args.tls_ca!r} does not fit a peering token: at most "
                         f"{MAX_TOKEN_CAS} certificates of at most {MAX_TOKEN_STRING_CHARS} "
                         "characters each")
    return PeeringTLS(
        identity=ServerTLS(cert_chain_pem=cert, private_key_pem=key),
        ca_pems=ca_pems,
        server_name=args.tls_server_name or default_server_name(args.name),
    )


def _warn_bugs(bugs: frozenset[str]) -> None:
    if not bugs:
        return
    bar = "!" * 78
    lines = [bar, "!! WARNING: historical bugs are switched ON in this server:"]
    for name in sorted(bugs):
        lines.append(f"!!   {name}: {BUGS[name].summary}")
    lines += ["!! It does NOT behave like a correct peering implementation.", bar]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _warn_test_hooks(on: bool) -> None:
    if on:
        print("peerkit serve: WARNING: test hooks are ON (--test-hooks): any client that reaches "
              "this port can reset peer streams, force a leader failover, and hold deletions "
              "and stream reads", file=sys.stderr, flush=True)


def _is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_interrupt(e) for e in exc.exceptions)
    return False


async def _serve(args: argparse.Namespace, bugs: frozenset[str], tls: PeeringTLS | None) -> int:
    log = EventLog("peerkit.serve", {"server": args.name})
    try:
        store = SqliteStore(args.data_dir)
    except (OSError, sqlite3.Error, StoreOpenError, StoreFailure) as exc:
        print(f"peerkit serve: cannot open data dir {args.data_dir!r}: {exc}", file=sys.stderr)
        return 1
    try:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with GrpcTransport() as transport:
                server = PeeringServer(args.name, store, transport, args.advertise_addr,
                                       bugs=bugs, tls=tls, test_hooks=args.test_hooks)
                try:
                    async with server.serve(args.grpc_addr, leader=True, grace=SHUTDOWN_GRACE):
                        security = ("plaintext" if tls is None
                                    else f"TLS as {tls.server_name}")
                        print(f"peerkit serve: {args.name} listening on {server.address} "
                              f"(advertised as {server.advertise_addr}; {security})",
                              flush=True)
                        async for signum in signals:
                            log.info("signal received; shutting down", signal=int(signum))
                            break
                except ListenError as exc:
                    print(f"peerkit serve: {exc}", file=sys.stderr)
                    return 1
    finally:
        store.close()
    return 0


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; return the exit code."""
    problem = PeeringServer.name_problem(args.name)
    if problem is not None:
        print(f"peerkit serve: --name: {problem}", file=sys.stderr)
        return 2
    if not args.data_dir.strip():
        # Path("") is the current directory: refuse rather than quietly write the database there
        print("peerkit serve: --data-dir must not be empty", file=sys.stderr)
        return 2
    for value, what in ((args.grpc_addr, "--grpc-addr"), (args.advertise_addr,
                                                          "--advertise-addr")):
        problem = None if value is None else _check_address(value, what)
        if problem:
            print(f"peerkit serve: {problem}", file=sys.stderr)
            return 2
    if args.advertise_addr is not None:
        # it goes into peering tokens: it must pass the peer's token check (codec)
        problem = address_problem(args.advertise_addr)
        if problem is not None:
            print(f"peerkit serve: --advertise-addr {args.advertise_addr!r} {problem}",
                  file=sys.stderr)
            return 2
    problem = _tls_usage_problem(args)
    if problem is not None:
        print(f"peerkit serve: {problem}", file=sys.stderr)
        return 2
    try:
        bugs = validate_bugs(args.bug or [])
        configure_logging(args.log_level)
        tls = None if args.plaintext else load_tls(args)
    except _TLSFileError as exc:
        print(f"peerkit serve: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"peerkit serve: {exc}", file=sys.stderr)
        return 2
    if args.cpu is not None:
        problem = pin_to_cpu(args.cpu)
        if problem is not None:
            print(f"peerkit serve: {problem}", file=sys.stderr)
            return 2
    _warn_bugs(bugs)
    _warn_test_hooks(args.test_hooks)
    host = args.grpc_addr.rpartition(":")[0]
    if args.advertise_addr is None and host in ("0.0.0.0", "::", "[::]"):
        print(f"peerkit serve: note: tokens will advertise {args.grpc_addr!r}, which peers "
              "cannot dial; pass --advertise-addr", file=sys.stderr)
    try:
        code: int = trio.run(_serve, args, bugs, tls,
                             restrict_keyboard_interrupt_to_checkpoints=True)
    except BaseException as exc:
        if not _is_interrupt(exc):
            raise
        print("peerkit serve: interrupted; shut down cleanly", file=sys.stderr)
        return 0
    return code

"""The operator's command line against a running ``peerkit serve``, like ``consul peering``.

One job: parse ``peerkit peering generate-token | establish | list | read | delete`` and
``peerkit services register | deregister | export | unexport | imported``, make the one RPC
each stands for over real gRPC (``--addr``, default ``$PEERKIT_ADDR``, else 127.0.0.1:8502;
TLS when ``--ca-file`` / ``$PEERKIT_CACERT`` names the server's CA, verified against
``--tls-server-name`` / ``$PEERKIT_TLS_SERVER_NAME``, like consul's ``-ca-file`` and
``-tls-server-name``), and print the answer (``cli/operator_views.py``: a table for people,
one JSON document with ``--json``).

Exit codes: 0 done; 1 the server could not be reached, did not answer within ``--timeout``,
refused the RPC (the gRPC status code name and the server's message are shown), or
``peering read`` found no peering of that name; 2 bad usage (one line on stderr; nothing is
sent). Every failure is one line on stderr, never a traceback.

May import: the standard library, trio, ``.argtypes``, ``peerkit.proto`` (through the views) and
``peerkit.impl`` (the client and the gRPC transport). ``peerkit.impl`` and the views are
imported only when a command runs, so that ``peerkit check`` does not pay for grpc.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, NoReturn, TextIO

from .argtypes import positive_float

if TYPE_CHECKING:
    from .impl.client import PeerkitClient

__all__ = ["ADDR_ENV", "DEFAULT_ADDR", "add_commands", "run"]

ADDR_ENV = "PEERKIT_ADDR"
CACERT_ENV = "PEERKIT_CACERT"  # consul: CONSUL_CACERT
SERVER_NAME_ENV = "PEERKIT_TLS_SERVER_NAME"  # consul: CONSUL_TLS_SERVER_NAME
DEFAULT_ADDR = "127.0.0.1:8502"  # Consul's gRPC port, and the address README's examples serve on
DEFAULT_TIMEOUT = 20.0  # above the server's own 10 s for Establish's secret exchange with its peer
MAX_TIMEOUT = 3600.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# UNAVAILABLE is also what a server says when it cannot reach its *peer* (Establish); these are
# the beginnings of gRPC core's own messages when the client cannot reach the server itself.
_UNREACHABLE = re.compile(r"failed to connect|errors resolving|socket closed|connection|"
                          r"recvmsg|sendmsg|broken pipe|goaway|dns", re.IGNORECASE)


class UsageError(Exception):
    """Bad input found after parsing (an address, a token file): exit 2 with one line."""


class _OneLineParser(argparse.ArgumentParser):
    """A subcommand parser whose usage errors are one line on stderr (exit 2), naming the
    command and pointing at --help, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


# ---- argument types: each refuses bad input at parse time, so nothing is sent -----------------


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a name must not be empty")
    if any(c.isspace() for c in text) or not text.isprintable():
        raise argparse.ArgumentTypeError(f"{text!r} is not a name: no spaces or control "
                                         "characters")
    return text


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"port must be a whole number from 0 to 65535, "
                                         f"got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    value = positive_float(text)
    if value > MAX_TIMEOUT:
        # gRPC turns a deadline past its clock's range into one already passed: an instant
        # DEADLINE_EXCEEDED that would be reported as "no answer within 1e+300 s"
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TIMEOUT:g} seconds, "
                                         f"got {text!r}")
    return value


def _meta_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"meta must look like key=value, got {text!r}")
    return key, value


def address_problem(address: str) -> str | None:
    """Why ``address`` is not HOST:PORT (None if it is)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return f"must look like host:port (e.g. {DEFAULT_ADDR}), got {address!r}"
    return None


# ---- the parser --------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    """--addr, --json and --timeout, shared by every operator command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", metavar="HOST:PORT",
                        help=f"the server's gRPC address (default: ${ADDR_ENV}, else "
                        f"{DEFAULT_ADDR})")
    common.add_argument("--ca-file", metavar="FILE",
                        help=f"speak TLS and verify the server with this CA (PEM; default: "
                        f"${CACERT_ENV}; none: plaintext)")
    common.add_argument("--tls-server-name", metavar="NAME",
                        help=f"the name the server's certificate must carry (default: "
                        f"${SERVER_NAME_ENV}, else the host of the address)")
    common.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout (keys: see README)")
    common.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds to wait for the server's answer (default "
                        f"{DEFAULT_TIMEOUT:g})")
    return common


def add_commands(sub: Any) -> None:
    """Add ``peering`` and ``services`` to the ``peerkit`` subparsers ``sub``."""
    common = [_common()]
    peering = sub.add_parser("peering", help="manage peerings on a running `peerkit serve` "
                             "(like `consul peering`)")
    actions = peering.add_subparsers(dest="action", metavar="ACTION", parser_class=_OneLineParser)
    actions.required = True
    gen = actions.add_parser("generate-token", parents=common,
                             help="create (or refresh) a PENDING peering; print its token")
    gen.add_argument("name", type=_name, metavar="NAME",
                     help="the local name for the peer, e.g. dc2")
    gen.add_argument("--meta", type=_meta_pair, action="append", default=[], metavar="K=V",
                     help="metadata on the peering (repeatable)")
    gen.add_argument("--server-external-address", dest="external", action="append",
                     default=[], metavar="HOST:PORT",
                     help="address put into the token instead of the server's advertised one "
                     "(repeatable)")
    est = actions.add_parser("establish", parents=common,
                             help="establish a peering with a token from the other cluster")
    est.add_argument("name", type=_name, metavar="NAME",
                     help="the local name for the peer, e.g. dc1")
    source = est.add_mutually_exclusive_group(required=True)
    source.add_argument("--token", help="the peering token ('-': read it from stdin)")
    source.add_argument("--token-file", metavar="FILE",
                        help="a file holding the token ('-': stdin)")
    est.add_argument("--meta", type=_meta_pair, action="append", default=[], metavar="K=V",
                     help="metadata on the peering (repeatable)")
    actions.add_parser("list", parents=common, help="the peerings, one row each")
    read = actions.add_parser("read", parents=common, help="one peering in detail")
    read.add_argument("name", type=_name, metavar="NAME")
    delete = actions.add_parser("delete", parents=common,
                                help="mark a peering for deletion (its deletion routine removes "
                                "the imported data, then the row)")
    delete.add_argument("name", type=_name, metavar="NAME")

    services = sub.add_parser("services", help="register and export services on a running "
                              "`peerkit serve`; show what it imported")
    actions = services.add_subparsers(dest="action", metavar="ACTION",
                                      parser_class=_OneLineParser)
    actions.required = True
    reg = actions.add_parser("register", parents=common,
                             help="register a service instance on a node (created if needed)")
    reg.add_argument("service", type=_name, metavar="SERVICE", help="the service name, e.g. web")
    reg.add_argument("--node", type=_name, required=True, help="the node it runs on")
    reg.add_argument("--port", type=_port, default=0)
    reg.add_argument("--id", dest="service_id", type=_name,
                     help="the instance ID (default: the service name)")
    reg.add_argument("--tag", type=_name, action="append", default=[], dest="tags",
                     help="a tag (repeatable)")
    dereg = actions.add_parser("deregister", parents=common,
                               help="remove every local instance of a service, or one by --id")
    which = dereg.add_mutually_exclusive_group(required=True)
    which.add_argument("service", type=_name, nargs="?", metavar="SERVICE", help="the service name")
    which.add_argument("--id", dest="service_id", type=_name, help="one instance's ID")
    exp = actions.add_parser("export", parents=common, help="export a service to a peer")
    exp.add_argument("service", type=_name, metavar="SERVICE")
    exp.add_argument("--to", dest="peer", type=_name, required=True, metavar="PEER")
    unexp = actions.add_parser("unexport", parents=common, help="stop exporting to a peer")
    unexp.add_argument("service", type=_name, metavar="SERVICE")
    unexp.add_argument("--from", "--to", dest="peer", type=_name, required=True,
                       metavar="PEER")
    imp = actions.add_parser("imported", parents=common,
                             help="the services (and trust bundles) imported from peers")
    imp.add_argument("--peer", type=_name, help="only those imported from this peer")


# ---- running a command -------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What a command prints: lines for people, or one JSON document."""

    lines: Sequence[str]
    document: dict[str, Any]


class NotFound(Exception):
    """The server answered, but there is nothing of that name (exit 1)."""


def _resolve_address(args: argparse.Namespace) -> str:
    address: str
    if args.addr is not None:
        where, address = "--addr", args.addr
    elif os.environ.get(ADDR_ENV):
        where, address = ADDR_ENV, os.environ[ADDR_ENV]
    else:
        return DEFAULT_ADDR
    problem = address_problem(address)
    if problem is not None:
        raise UsageError(f"{where} {problem}")
    return address


def _resolve_tls(args: argparse.Namespace) -> tuple[tuple[str, ...], str] | None:
    """(CA PEMs, server name) to speak TLS with, or None for plaintext."""
    ca_file = args.ca_file if args.ca_file is not None else os.environ.get(CACERT_ENV) or None
    name = (args.tls_server_name if args.tls_server_name is not None
            else os.environ.get(SERVER_NAME_ENV, ""))
    if ca_file is None:
        if args.tls_server_name is not None:
            raise UsageError("--tls-server-name needs --ca-file (or $" + CACERT_ENV + ")")
        return None
    try:
        with open(ca_file, encoding="ascii") as handle:
            pem = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot read the CA file {ca_file}: {reason}") from None
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise UsageError(f"the CA file {ca_file} holds no PEM certificate")
    return (pem,), name


def _read_token(args: argparse.Namespace, stdin: IO[str]) -> str:
    token: str
    if args.token is not None and args.token != "-":
        token = args.token
    elif args.token == "-" or args.token_file == "-":
        token = stdin.read()
    else:
        try:
            with open(args.token_file, encoding="utf-8") as handle:
                token = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(f"cannot read --token-file {args.token_file}: {reason}") from None
    token = token.strip()
    if not token:
        raise UsageError("the peering token is empty")
    return token


Call = Callable[["PeerkitClient"], Awaitable[Answer]]


def _command(args: argparse.Namespace, stdin: IO[str]) -> Call:
    """The RPC (and how to show its answer) that ``args`` asks for."""
    from . import operator_views as views

    name: str = getattr(args, "name", "")  # the commands that use it all require it
    key = (args.command, args.action)

    if key == ("peering", "generate-token"):
        async def generate(client: PeerkitClient) -> Answer:
            token = await client.generate_token(name, meta=dict(args.meta),
                                                server_external_addresses=args.external)
            return Answer([token], {"peer_name": name, "token": token})
        return generate
    if key == ("peering", "establish"):
        token = _read_token(args, stdin)

        async def establish(client: PeerkitClient) -> Answer:
            await client.establish(name, token, meta=dict(args.meta))
            return Answer([f"Established peering {name}; `peerkit peering read {name}` shows "
                           "when its stream is ACTIVE."], {"peer_name": name})
        return establish
    if key == ("peering", "list"):
        async def listing(client: PeerkitClient) -> Answer:
            rows = sorted(await client.peering_list(), key=lambda p: p.Name)
            lines = views.peering_rows(rows) if rows else ["No peerings."]
            return Answer(lines, {"peerings": [views.peering_json(p) for p in rows]})
        return listing
    if key == ("peering", "read"):
        async def read(client: PeerkitClient) -> Answer:
            peering = await client.peering_read(name)
            if peering is None:
                raise NotFound(f"no peering named {name!r}")
            return Answer(views.peering_detail(peering), {"peering": views.peering_json(peering)})
        return read
    if key == ("peering", "delete"):
        async def delete(client: PeerkitClient) -> Answer:
            await client.peering_delete(name)
            return Answer([f"Submitted peering {name} for deletion; its deletion routine "
                           "removes the imported data, then the row."], {"peer_name": name})
        return delete
    if key == ("services", "register"):
        async def register(client: PeerkitClient) -> Answer:
            service_id = await client.register_service(
                args.node, args.service, service_id=args.service_id or "", port=args.port,
                tags=args.tags)
            return Answer([f"Registered service {args.service} (ID {service_id}) on node "
                           f"{args.node}, port {args.port}."],
                          {"service": args.service, "service_id": service_id, "node": args.node,
                           "port": args.port, "tags": list(args.tags)})
        return register
    if key == ("services", "deregister"):
        async def deregister(client: PeerkitClient) -> Answer:
            removed = await client.deregister_service(service_id=args.service_id or "",
                                                      service=args.service or "")
            what = f"ID {args.service_id}" if args.service_id else f"service {args.service}"
            noun = "instance" if removed == 1 else "instances"
            return Answer([f"Deregistered {removed} {noun} ({what})."],
                          {"service": args.service, "service_id": args.service_id,
                           "removed": removed})
        return deregister
    if key == ("services", "export"):
        async def export(client: PeerkitClient) -> Answer:
            await client.export_service(args.service, args.peer)
            return Answer([f"Exported service {args.service} to {args.peer}."],
                          {"service": args.service, "peer_name": args.peer})
        return export
    if key == ("services", "unexport"):
        async def unexport(client: PeerkitClient) -> Answer:
            await client.unexport_service(args.service, args.peer)
            return Answer([f"Stopped exporting service {args.service} to {args.peer}."],
                          {"service": args.service, "peer_name": args.peer})
        return unexport
    if key == ("services", "imported"):
        async def imported(client: PeerkitClient) -> Answer:
            entries = views.imports_of(await client.read_catalog(), args.peer)
            return Answer(views.imported_rows(entries), views.imported_json(entries))
        return imported
    raise AssertionError(f"no operator command {key}")  # the parser admits no other


async def _call(address: str, timeout: float, command: Call,
                tls: tuple[tuple[str, ...], str] | None = None) -> Answer | BaseException:
    """Run ``command`` against ``address`` (over TLS with ``tls``: CA PEMs and server name);
    its failure is returned, not raised, so that nothing of trio's or the transport's wrapping
    reaches the user."""
    from .impl.client import PeerkitClient
    from .impl.transport import ClientTLS, StreamFailed
    from .impl.transport.grpc_bridge import GrpcTransport

    client_tls = None if tls is None else ClientTLS(*tls)
    try:
        async with GrpcTransport() as transport, PeerkitClient.connect(
                transport, address, timeout=timeout, tls=client_tls) as client:
            return await command(client)
    except (StreamFailed, NotFound) as exc:
        return exc


def describe_failure(exc: BaseException, address: str, timeout: float) -> str:
    """One line: what went wrong, naming the address, the status code and the message."""
    from .impl.transport import StatusCode, StreamFailed

    if not isinstance(exc, StreamFailed):
        return f"{exc} on the server at {address}"
    message = " ".join(exc.message.split())  # gRPC core's messages may hold newlines
    status = f"{exc.code.name}: {message}" if message else exc.code.name
    if exc.code is StatusCode.UNAVAILABLE and _UNREACHABLE.search(message):
        return f"cannot reach the server at {address}: {status}"
    if exc.code is StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from the server at {address} within {timeout:g} s ({status})"
    if exc.code is StatusCode.UNIMPLEMENTED:
        return f"the server at {address} does not serve this RPC; is it a peerkit server? " \
               f"({status})"
    return f"the server at {address} refused: {status}"


def run(args: argparse.Namespace, out: TextIO, err: TextIO,
        stdin: IO[str] | None = None) -> int:
    """Run one operator command; return its exit code."""
    import json

    import trio

    prog = f"peerkit {args.command} {args.action}"
    try:
        address = _resolve_address(args)
        tls = _resolve_tls(args)
        command = _command(args, stdin or sys.stdin)
    except UsageError as exc:
        err.write(f"{prog}: {exc}\n")
        return EXIT_USAGE
    result = trio.run(_call, address, args.timeout, command, tls)
    if isinstance(result, BaseException):
        err.write(f"{prog}: {describe_failure(result, address, args.timeout)}\n")
        return EXIT_FAILED
    if args.json:
        json.dump(result.document, out, indent=2)
        out.write("\n")
    else:
        for line in result.lines:
            out.write(line + "\n")
    return EXIT_OK

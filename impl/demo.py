"""``peerkit demo``: the whole peering lifecycle between two clusters over real gRPC, narrated.

One job: start two peerkit servers, dc1 and dc2, on 127.0.0.1 (ports picked by the OS, memory
stores, one process), drive them only through their RPCs, and print a timeline:

1. dc1 registers ``api`` (two instances) and ``web``; dc1 generates a peering token for "dc2";
2. dc2 establishes the peering "dc1" with it; the stream comes up (both sides read ACTIVE);
3. dc1 exports ``api`` and ``web`` to dc2; dc2 imports them (and each side the other's trust
   bundle);
4. dc1 -- the acceptor, which exports the data -- deletes the peering. This is the clearer story
   of the two: the side that *imported* the data is the one that gets ``Terminated``, so one can
   watch dc2 mark its row TERMINATED, its deletion routine remove the imported services and the
   trust bundle, and the TERMINATED row stay as a signal to dc2's operator, while dc1's own row
   (marked DELETING) is removed for good by dc1's deletion routine.

Every wait polls PeeringRead / ReadCatalog / TrustBundleRead until a condition holds or a
deadline passes (``--timeout``, default 30 s); it never sleeps a fixed time to "let things
happen". Exit code 0 when every step was observed, 1 otherwise. Server logs go to stderr at
``--log-level`` (default ``warning``, so only the timeline shows).

May import: the standard library, trio, ``peerkit.model.vocabulary`` and the sibling modules of
``peerkit.impl`` (the gRPC transport included).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import trio

from peerkit.model.vocabulary import PeeringState
from peerkit.proto import peering_pb2

from .client import PeerkitClient
from .logs import configure_logging
from .server import PeeringServer
from .store import MemoryStore
from .transport import StreamFailed
from .transport.grpc_bridge import GrpcTransport

__all__ = ["add_arguments", "run"]

T = TypeVar("T")
POLL_INTERVAL: Final = 0.05


class DemoFailed(Exception):
    pass


def _seconds(text: str) -> float:
    """A finite, positive number of seconds (argparse type); nan, inf and <= 0 are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=_seconds, default=30.0,
                        help="seconds to wait for each step before giving up (default 30)")
    parser.add_argument("--log-level", default="warning",
                        choices=("debug", "info", "warning", "error"),
                        help="server log lines on stderr (default: warning)")


def _is(state: PeeringState) -> Callable[[peering_pb2.Peering | None], bool]:
    return lambda p: p is not None and PeeringState(p.State) is state


def _state(p: peering_pb2.Peering | None) -> str:
    if p is None:
        return "(no row)"
    return PeeringState(p.State).name


class Timeline:
    def __init__(self, out: Callable[[str], None]) -> None:
        self._out = out
        self._t0 = trio.current_time()

    def say(self, text: str) -> None:
        self._out(f"[{trio.current_time() - self._t0:7.3f}s] {text}")

    def detail(self, text: str) -> None:
        self._out(f"{'':11}{text}")


async def _until(
    what: str, probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float
) -> T:
    """Poll ``probe`` until ``done(result)``; DemoFailed after ``timeout`` seconds."""
    last: T | None = None
    with trio.move_on_after(timeout):
        while True:
            last = await probe()
            if done(last):
                return last
            await trio.sleep(POLL_INTERVAL)
    raise DemoFailed(f"timed out after {timeout:g}s waiting for {what} (last seen: {last!r})")


async def _story(transport: GrpcTransport, timeout: float, tl: Timeline) -> None:
    dc1 = PeeringServer("dc1", MemoryStore(), transport)
    dc2 = PeeringServer("dc2", MemoryStore(), transport)
    async with dc1.serve("127.0.0.1:0"), dc2.serve("127.0.0.1:0"):
        assert dc1.address is not None and dc2.address is not None
        tl.say(f"dc1 is serving on {dc1.address}, dc2 on {dc2.address} (both leaders)")
        async with PeerkitClient.connect(transport, dc1.address) as c1, \
                PeerkitClient.connect(transport, dc2.address) as c2:
            await c1.register_service("node-a", "api", service_id="api-1", port=8080)
            await c1.register_service("node-b", "api", service_id="api-2", port=8080)
            await c1.register_service("node-a", "web", service_id="web-1", port=80)
            tl.say("dc1 registered api (api-1 on node-a, api-2 on node-b) and web (web-1)")

            token = await c1.generate_token("dc2")
            row1 = await c1.peering_read("dc2")
            tl.say(f"dc1 GenerateToken(dc2) -> token {token[:24]}... "
                   f"(row {_state(row1)}, ID {row1.ID if row1 else '?'})")
            await c2.establish("dc1", token)
            row2 = await c2.peering_read("dc1")
            tl.say(f"dc2 Establish(dc1) -> dc2 reads {_state(row2)}; it dials "
                   f"{', '.join(row2.PeerServerAddresses) if row2 else '?'}")

            await _until("dc2 to read its peering ACTIVE", lambda: c2.peering_read("dc1"),
                         _is(PeeringState.ACTIVE), timeout)
            await _until("dc1 to read its peering ACTIVE", lambda: c1.peering_read("dc2"),
                         _is(PeeringState.ACTIVE), timeout)
            tl.say("the peer stream is up: dc1 reads ACTIVE, dc2 reads ACTIVE")

            await c1.export_service("api", "dc2")
            await c1.export_service("web", "dc2")
            tl.say("dc1 exported api and web to dc2")
            await _until("dc2 to import api and web", lambda: c2.imported_services("dc1"),
                         lambda names: names == ["api", "web"], timeout)
            catalog = await c2.read_catalog()
            for entry in catalog.Imports:
                instances = ", ".join(f"{n.Service.ID}@{n.Node.Name}" for n in entry.Nodes)
                tl.say(f"dc2 imported from {entry.PeerName}: {instances}; trust bundle for "
                       f"{entry.TrustBundle.TrustDomain or '(none)'}")
            await _until("dc1 to import dc2's trust bundle", lambda: c1.trust_bundle_read("dc2"),
                         lambda b: b is not None, timeout)
            tl.say("dc1 holds dc2's trust bundle (both sides replicate their CA roots)")

            await c1.peering_delete("dc2")
            now = _state(await c1.peering_read("dc2"))
            tl.say("dc1 PeeringDelete(dc2) returned: the row is marked for deletion "
                   + (f"(dc1 reads {now})" if now != "(no row)" else
                      "(and dc1's deletion routine was quick: the row is already gone)"))
            await _until("dc2 to read TERMINATED", lambda: c2.peering_read("dc1"),
                         _is(PeeringState.TERMINATED), timeout)
            tl.say("dc2 received Terminated on the stream: its row is TERMINATED")
            await _until("dc2's imported services to be removed",
                         lambda: c2.imported_services("dc1"), lambda names: names == [], timeout)
            await _until("dc2's copy of dc1's trust bundle to be removed",
                         lambda: c2.trust_bundle_read("dc1"), lambda b: b is None, timeout)
            tl.say("dc2's deletion routine removed the imported api/web instances and dc1's "
                   "trust bundle")
            await _until("dc1's row to be removed", lambda: c1.peering_read("dc2"),
                         lambda p: p is None, timeout)
            tl.say("dc1's deletion routine removed dc2's trust bundle, then dc1's row: gone")

            final2 = await c2.peering_read("dc1")
            if final2 is None or PeeringState(final2.State) is not PeeringState.TERMINATED:
                raise DemoFailed(f"dc2's row should stay TERMINATED, found {_state(final2)}")
            catalog2 = await c2.read_catalog()
            tl.say("final state:")
            tl.detail(f"dc1: peering dc2 {_state(await c1.peering_read('dc2'))}; local services "
                      f"{sorted({n.Service.ID for n in (await c1.read_catalog()).LocalServices})}")
            tl.detail(f"dc2: peering dc1 {_state(final2)} (kept as a signal to the operator); "
                      f"imported data {[e.PeerName for e in catalog2.Imports] or 'none'}")


async def _main(args: argparse.Namespace) -> int:
    tl = Timeline(lambda line: print(line, flush=True))
    tl.say("peerkit demo: two clusters over real gRPC on 127.0.0.1")
    try:
        async with GrpcTransport() as transport:
            await _story(transport, args.timeout, tl)
    except (DemoFailed, StreamFailed) as exc:
        tl.say(f"FAILED: {exc}")
        return 1
    tl.say("done: the whole lifecycle was observed through the RPCs")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print("peerkit demo: --timeout must be > 0", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    code: int = trio.run(_main, args, restrict_keyboard_interrupt_to_checkpoints=True)
    return code

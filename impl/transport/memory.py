"""An in-memory network implementing the transport interface, deterministic under trio's MockClock.

One job: carry peerkit RPCs between trio tasks of one process, with test controls that real gRPC
cannot give (hold / release a direction, cancels that overtake in-flight messages, resets, and the
Python-gRPC "EOF before cancel" server behaviour), obeying the contract in ``base.py``.
May import: the standard library, trio, and ``.base`` (this package's interface). No grpc, no
threads, no real time (only trio's clock), so that runs are reproducible under a seeded scheduler.

Model
-----
Every stream RPC is a :class:`MemoryCall` with two directions, "client→server" and
"server→client". Each direction is a FIFO of *items* in flight: messages (already serialized to
bytes, as on the wire), the client's half-close (c→s only), a queued client cancel (c→s only), and
the server's final status (s→c only, the "trailer").

* ``receive`` takes the message at the head of its inbound direction, unless that direction is
  held.
* A control item (half-close, cancel, status) takes effect at the receiving end as soon as it is at
  the head of a direction that is not held, i.e. after every message before it was received.
* When the server end's ending is known (handler returned / aborted / cancelled), the messages
  still in c→s are discarded (nobody reads them any more) and client sends are discarded until
  the client learns the ending from the trailer.
* ``MemoryCall.cancel(overtake=True)`` (the default, and what a client's ``stream.cancel()`` does
  unless ``cancel_overtakes`` is False) drops everything undelivered in the client→server
  direction -- held messages included -- and the server sees the cancel next, at once.
  ``overtake=False`` queues the cancel behind those messages.
* ``MemoryCall.reset()`` is a connection reset, as gRPC reports one: the client end sees
  ``StreamFailed(UNAVAILABLE, "connection reset")``, the server end ``StreamCancelled``; both
  directions are dropped, holds are ignored. ``reset(overtake=False)`` queues the reset behind
  what is in flight in each direction instead: each end receives that first (subject to holds).
* ``eof_before_cancel=True`` reproduces Python gRPC servers: a client cancel reaching a server
  end that is blocked in ``receive`` first completes that receive with EndOfStream (``outcome``
  still None when the handler sees it); the cancel is scheduled when that receive returns and
  lands one scheduling step later (``outcome`` CANCELLED, ops raise StreamCancelled). A cancel
  reaching a server end that is not receiving lands at once, as with the gRPC bridge.
* ``send_window=N`` (default None: unbounded) bounds the messages one end may have undelivered
  in its direction; ``send`` then waits for room (cancellable, nothing queued), as a gRPC send
  does when the peer stops reading and the flow-control window is full.

Addresses are "name:port" strings such as "dc1:8502"; port 0 picks a free port (from 49152 up).
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from .base import (
    AddressInUseError,
    BidiStream,
    ClientTLS,
    ClosedForSending,
    EndOfStream,
    Handler,
    HandlerOutcome,
    Outcome,
    ServerTLS,
    Side,
    StatusCode,
    StreamFailed,
    StreamMethod,
    UnaryMethod,
    _check_bytes,
    _check_grace,
    _check_handlers,
    _check_timeout,
    _split_host_port,
    _unwrap_body_error,
    decode_or_outcome,
    run_handler,
    unary_call,
)

__all__ = [
    "Direction",
    "MemoryCall",
    "MemoryChannel",
    "MemoryNetwork",
    "MemoryServer",
    "MemoryStream",
]

SendT = TypeVar("SendT")
RecvT = TypeVar("RecvT")
ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")

TraceEvent = tuple[object, ...]


class Direction(enum.Enum):
    """One direction of a stream."""

    CLIENT_TO_SERVER = "client→server"
    SERVER_TO_CLIENT = "server→client"


_DIRECTION_NAMES: dict[str, Direction] = {
    "client→server": Direction.CLIENT_TO_SERVER,
    "client->server": Direction.CLIENT_TO_SERVER,
    "c2s": Direction.CLIENT_TO_SERVER,
    "server→client": Direction.SERVER_TO_CLIENT,
    "server->client": Direction.SERVER_TO_CLIENT,
    "s2c": Direction.SERVER_TO_CLIENT,
}


def _direction(value: Direction | str) -> Direction:
    if isinstance(value, Direction):
        return value
    if not isinstance(value, str):
        raise TypeError(f"direction must be a Direction or str, not {type(value).__name__}")
    try:
        return _DIRECTION_NAMES[value]
    except KeyError:
        names = ", ".join(repr(n) for n in _DIRECTION_NAMES)
        raise ValueError(f"unknown direction {value!r}; expected one of {names}") from None


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


# Items in flight.
@dataclass(frozen=True)
class _Msg:
    data: bytes


class _HalfClose:
    def __repr__(self) -> str:
        return "<half-close>"


class _Cancel:
    def __repr__(self) -> str:
        return "<cancel>"


@dataclass(frozen=True)
class _Status:
    outcome: Outcome


class _Reset:
    """A connection reset queued behind what is in flight (``reset(overtake=False)``)."""

    def __repr__(self) -> str:
        return "<reset>"


_Item = _Msg | _HalfClose | _Cancel | _Status | _Reset
_HALF_CLOSE = _HalfClose()
_CANCEL = _Cancel()

_CLIENT_CANCEL_MSG = "cancelled by the client"
_SERVER_CANCEL_MSG = "cancelled by the server"
_RESET_MSG = "connection reset"
_SHUTDOWN_MSG = "server shutting down"


class _Pipe:
    def __init__(self) -> None:
        self.items: deque[_Item] = deque()
        self.held = False


class MemoryCall:
    """One stream RPC on a :class:`MemoryNetwork`, with its two ends and the test controls.

    ``client`` and ``server`` are the two :class:`MemoryStream` ends; ``id``, ``address`` and
    ``method`` identify it. All controls are synchronous and take effect at once.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        call_id: int,
        address: str,
        method: str,
        server: MemoryServer | None,
        client_serializer: Callable[[Any], bytes],
        client_deserializer: Callable[[bytes], Any],
        server_serializer: Callable[[Any], bytes],
        server_deserializer: Callable[[bytes], Any],
    ) -> None:
        self.id = call_id
        self.address = address
        self.method = method
        self.network = network
        self._server = server
        self.eof_before_cancel = network.eof_before_cancel
        self.cancel_overtakes = network.cancel_overtakes
        self._pipes = {Direction.CLIENT_TO_SERVER: _Pipe(), Direction.SERVER_TO_CLIENT: _Pipe()}
        self._lot = trio.lowlevel.ParkingLot()
        self.client: MemoryStream[Any, Any] = MemoryStream(
            self, "client", client_serializer, client_deserializer
        )
        self.server: MemoryStream[Any, Any] = MemoryStream(
            self, "server", server_serializer, server_deserializer
        )
        self._server_inbound_eof = False
        self._cancel_pending: str | None = None  # EOF-before-cancel: the cancel still to apply
        self._late_scheduled = False

    def __repr__(self) -> str:
        return f"<MemoryCall #{self.id} {self.method} at {self.address}>"

    # ---- test controls ------------------------------------------------------------------

    def hold(self, direction: Direction | str) -> None:
        """Stop delivering in ``direction``: items keep queueing but the receiver gets none."""
        d = _direction(direction)
        self._pipes[d].held = True
        self._trace("hold", d.value)

    def release(self, direction: Direction | str) -> None:
        """Resume delivery in ``direction``, in order."""
        d = _direction(direction)
        self._pipes[d].held = False
        self._trace("release", d.value)
        self._changed()

    def is_held(self, direction: Direction | str) -> bool:
        return self._pipes[_direction(direction)].held

    def in_flight(self, direction: Direction | str) -> list[bytes | str]:
        """What is queued in ``direction``: message bytes, or "half-close", "cancel", "reset",
        "status:CODE"."""
        out: list[bytes | str] = []
        for item in self._pipes[_direction(direction)].items:
            if isinstance(item, _Msg):
                out.append(item.data)
            elif isinstance(item, _HalfClose):
                out.append("half-close")
            elif isinstance(item, _Cancel):
                out.append("cancel")
            elif isinstance(item, _Reset):
                out.append("reset")
            else:
                out.append(f"status:{item.outcome.code.name}")
        return out

    def cancel(self, overtake: bool = True, *, side: Side = "client") -> None:
        """Cancel the RPC from ``side`` (what that end's ``stream.cancel()`` would do).

        ``overtake=True``: everything undelivered towards the other end is dropped (held items
        too) and the cancel reaches it at once. ``overtake=False``: the cancel is delivered after
        what is already queued, subject to holds. A server-side cancel ends the RPC with status
        CANCELLED."""
        _check_bool("overtake", overtake)
        if side == "client":
            self._client_cancel(overtake)
        elif side == "server":
            self._server_finish(Outcome(StatusCode.CANCELLED, _SERVER_CANCEL_MSG), overtake)
        else:
            raise ValueError(f"side must be 'client' or 'server', got {side!r}")

    def reset(self, overtake: bool = True) -> None:
        """Connection reset: the client sees StreamFailed(UNAVAILABLE), the server StreamCancelled.

        ``overtake=True``: everything in flight is dropped and both ends see the reset at once.
        ``overtake=False``: each end first receives what is already in flight towards it
        (subject to holds), then the reset; what either end sends after it is never delivered.
        (TCP delivers what reached the peer's socket before a RST arrives; the model allows both
        orders.)"""
        _check_bool("overtake", overtake)
        if overtake:
            self._trace("reset")
            self._fail_both(Outcome(StatusCode.UNAVAILABLE, _RESET_MSG), _RESET_MSG)
            return
        self._trace("reset queued")
        for pipe in self._pipes.values():
            pipe.items.append(_Reset())
        self._changed()

    @property
    def client_outcome(self) -> Outcome | None:
        return self.client.outcome

    @property
    def server_outcome(self) -> Outcome | None:
        return self.server.outcome

    @property
    def finished(self) -> bool:
        """True once both ends know the ending."""
        return self.client.outcome is not None and self.server.outcome is not None

    # ---- internals ----------------------------------------------------------------------

    def _trace(self, *event: object) -> None:
        self.network.trace.append((event[0], self.id, *event[1:]))

    def _changed(self) -> None:
        self._pump()
        self._lot.unpark_all()

    def _pump(self) -> None:
        """Apply control items that have reached the head of a direction that is not held."""
        c2s = self._pipes[Direction.CLIENT_TO_SERVER]
        while c2s.items and not c2s.held and not isinstance(c2s.items[0], _Msg):
            item = c2s.items.popleft()
            if isinstance(item, _HalfClose):
                self._trace("half-close arrives")
                self._server_inbound_eof = True
            elif isinstance(item, _Cancel):
                self._trace("cancel arrives")
                self._server_sees_cancel(_CLIENT_CANCEL_MSG)
            elif isinstance(item, _Reset):
                self._trace("reset arrives", "server")
                if self.server.outcome is None:
                    self.server._set_ending(Outcome(StatusCode.CANCELLED, _RESET_MSG))
                c2s.items.clear()  # sent after the reset: never delivered
        s2c = self._pipes[Direction.SERVER_TO_CLIENT]
        while s2c.items and not s2c.held and not isinstance(s2c.items[0], _Msg):
            item = s2c.items.popleft()
            if isinstance(item, _Status):
                self._trace("status arrives", item.outcome.code.name)
                self.client._set_ending(item.outcome)
            elif isinstance(item, _Reset):
                self._trace("reset arrives", "client")
                self.client._set_ending(Outcome(StatusCode.UNAVAILABLE, _RESET_MSG))
                s2c.items.clear()  # sent after the reset: never delivered

    def _window_full(self, side: Side) -> bool:
        """A send from ``side`` must wait: the network has a send window and that many of
        ``side``'s messages are still undelivered (as gRPC's flow-control window fills when the
        receiver stops reading). Never while the other end's ending is known (sends are then
        dropped) or the direction is being emptied."""
        window = self.network.send_window
        if window is None:
            return False
        if side == "client":
            if self.server.outcome is not None:
                return False
            pipe = self._pipes[Direction.CLIENT_TO_SERVER]
        else:
            if self.client.outcome is not None:
                return False
            pipe = self._pipes[Direction.SERVER_TO_CLIENT]
        return sum(1 for item in pipe.items if isinstance(item, _Msg)) >= window

    def _client_send(self, data: bytes) -> None:
        if self.server.outcome is not None:
            self._trace("drop", Direction.CLIENT_TO_SERVER.value, data)
            return
        self._pipes[Direction.CLIENT_TO_SERVER].items.append(_Msg(data))
        self._trace("send", Direction.CLIENT_TO_SERVER.value, data)
        self._changed()

    def _server_send(self, data: bytes) -> None:
        if self.client.outcome is not None:
            self._trace("drop", Direction.SERVER_TO_CLIENT.value, data)
            return
        self._pipes[Direction.SERVER_TO_CLIENT].items.append(_Msg(data))
        self._trace("send", Direction.SERVER_TO_CLIENT.value, data)
        self._changed()

    def _take(self, direction: Direction) -> bytes | None:
        pipe = self._pipes[direction]
        if pipe.held or not pipe.items or not isinstance(pipe.items[0], _Msg):
            return None
        item = pipe.items.popleft()
        assert isinstance(item, _Msg)
        self._trace("deliver", direction.value, item.data)
        self._changed()
        return item.data

    def _client_half_close(self) -> None:
        if self.client.outcome is not None or self.server.outcome is not None:
            return
        self._pipes[Direction.CLIENT_TO_SERVER].items.append(_HALF_CLOSE)
        self._trace("half-close", Direction.CLIENT_TO_SERVER.value)
        self._changed()

    def _undecodable(self, side: Side, outcome: Outcome) -> None:
        """``side`` received a message that does not decode: a server end ends the RPC with
        ``outcome`` (INVALID_ARGUMENT); a client end cancels it and knows it as ``outcome``."""
        self._trace("undecodable", side)
        if side == "server":
            self._server_finish(outcome)
        else:
            self._client_cancel(True, outcome)

    def _client_cancel(self, overtake: bool, outcome: Outcome | None = None) -> None:
        if self.client.outcome is not None:
            return
        self._trace("cancel", "client", "overtake" if overtake else "queued")
        self.client._set_ending(outcome or Outcome(StatusCode.CANCELLED, _CLIENT_CANCEL_MSG))
        self._pipes[Direction.SERVER_TO_CLIENT].items.clear()
        if self.server.outcome is None:
            c2s = self._pipes[Direction.CLIENT_TO_SERVER]
            if overtake:
                c2s.items.clear()
                self._server_sees_cancel(_CLIENT_CANCEL_MSG)
            else:
                c2s.items.append(_CANCEL)
        self._changed()

    def _server_sees_cancel(self, message: str) -> None:
        if self.server.outcome is not None or self._cancel_pending is not None:
            return
        if (
            self.eof_before_cancel
            and self.server._receiving
            and not self._server_inbound_eof
            and self._server is not None
        ):
            # Python gRPC: the server's pending read completes as end-of-stream; the cancel is
            # only marked once that receive() has returned (see _schedule_late_cancel).
            self._server_inbound_eof = True
            self._cancel_pending = message
            self._trace("eof before cancel")
            self._lot.unpark_all()
            return
        self._apply_server_cancelled(message)

    def _schedule_late_cancel(self) -> None:
        """Called when the server's receive() that got the cancel's EOF exits."""
        message = self._cancel_pending
        if message is None or self._late_scheduled:
            return
        self._late_scheduled = True
        if self._server is None or not self._server._spawn_system(self._late_cancel, message):
            self._late_cancel_now(message)

    async def _late_cancel(self, message: str) -> None:
        await trio.lowlevel.checkpoint()
        self._late_cancel_now(message)

    def _late_cancel_now(self, message: str) -> None:
        self._cancel_pending = None
        self._apply_server_cancelled(message)

    def _apply_server_cancelled(self, message: str) -> None:
        if self.server.outcome is not None:
            return
        self._trace("server cancelled")
        self.server._set_ending(Outcome(StatusCode.CANCELLED, message))
        for pipe in self._pipes.values():
            pipe.items.clear()
        self._changed()

    def _server_finish(self, outcome: Outcome, overtake: bool = False) -> None:
        """The server end's ending is now known locally (handler done, abort, server cancel)."""
        if self.server.outcome is not None:
            return
        self._trace("server finish", outcome.code.name)
        self.server._set_ending(outcome)
        self._pipes[Direction.CLIENT_TO_SERVER].items.clear()
        if self.client.outcome is None:
            s2c = self._pipes[Direction.SERVER_TO_CLIENT]
            if overtake:
                s2c.items.clear()
                self.client._set_ending(outcome)
            else:
                s2c.items.append(_Status(outcome))
        self._changed()

    def _fail_both(self, client_outcome: Outcome, server_message: str) -> None:
        if self.client.outcome is None:
            self.client._set_ending(client_outcome)
        self._cancel_pending = None
        if self.server.outcome is None:
            self.server._set_ending(Outcome(StatusCode.CANCELLED, server_message))
        for pipe in self._pipes.values():
            pipe.items.clear()
        self._changed()


class MemoryStream(BidiStream[SendT, RecvT]):
    """One end of a :class:`MemoryCall`."""

    def __init__(
        self,
        call: MemoryCall,
        side: Side,
        serializer: Callable[[SendT], bytes],
        deserializer: Callable[[bytes], RecvT],
    ) -> None:
        self.call = call
        self.side = side
        self.method = call.method
        self._serializer = serializer
        self._deserializer = deserializer
        super().__init__()
        self._send_closed = False
        self._receiving = False
        self._sending = False

    def __repr__(self) -> str:
        return f"<MemoryStream {self.side} end of call #{self.call.id} {self.method}>"

    def _inbound(self) -> Direction:
        if self.side == "client":
            return Direction.SERVER_TO_CLIENT
        return Direction.CLIENT_TO_SERVER

    def _ending_error(self) -> BaseException | None:
        """What ``receive`` must raise now, if anything (before looking for messages)."""
        if self._ending is not None and not self._ending.ok:
            return self._ending.exception()
        if self.side == "server" and (self.call._server_inbound_eof or self._ending is not None):
            return EndOfStream()
        if self.side == "client" and self._ending is not None:
            return EndOfStream()
        return None

    async def receive(self) -> RecvT:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                error = self._ending_error()
                if error is not None:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    raise error
                data = self.call._take(self._inbound())
                if data is not None:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    decoded = decode_or_outcome(self._deserializer, data, self.side)
                    if not isinstance(decoded, Outcome):
                        return decoded
                    self.call._undecodable(self.side, decoded)
                    raise decoded.exception()
                await self.call._lot.park()
        finally:
            self._receiving = False
            if self.side == "server":
                self.call._schedule_late_cancel()

    def receive_ready(self, limit: int) -> list[RecvT]:
        """The messages already delivered to this end's pipe (not held back), in order, up to
        ``limit``; stops before an ending or a message that does not decode."""
        out: list[RecvT] = []
        if self._receiving:
            return out
        pipe = self.call._pipes[self._inbound()]
        while len(out) < limit and self._ending_error() is None:
            if pipe.held or not pipe.items or not isinstance(pipe.items[0], _Msg):
                break
            try:
                decoded = self._deserializer(pipe.items[0].data)
            except Exception:
                break  # left for receive(), which ends the RPC as the contract says
            self.call._take(self._inbound())
            out.append(decoded)
        return out

    async def send(self, message: SendT) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                if self._send_closed:
                    raise ClosedForSending()
                if self._ending is not None:
                    raise self._ending.exception()
                if not self.call._window_full(self.side):
                    break
                # the peer is not reading: wait for room (cancellable; nothing is queued)
                await self.call._lot.park()
            data = _check_bytes(self._serializer(message))
            if self.side == "client":
                self.call._client_send(data)
            else:
                self.call._server_send(data)
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def close_send(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._send_closed:
            self._send_closed = True
            if self.side == "client":
                self.call._client_half_close()
            else:
                self.call._trace("close-send", "server")
        await trio.lowlevel.cancel_shielded_checkpoint()

    def cancel(self) -> None:
        if self.side == "client":
            self.call._client_cancel(self.call.cancel_overtakes)
        else:
            self.call._server_finish(Outcome(StatusCode.CANCELLED, _SERVER_CANCEL_MSG))


@dataclass
class _UnaryResult:
    outcome: Outcome | None = None
    response: bytes = b""


class MemoryServer:
    """A server listening on a :class:`MemoryNetwork` address."""

    def __init__(
        self, network: MemoryNetwork, address: str, table: dict[str, Handler], nursery: trio.Nursery
    ) -> None:
        self.network = network
        self._address = address
        self._table = table
        self._nursery = nursery
        self._live: set[MemoryCall] = set()
        self._scopes: set[trio.CancelScope] = set()
        self._running_handlers = 0
        self._idle = trio.Event()
        self._idle.set()
        self.closing = False

    @property
    def address(self) -> str:
        return self._address

    def __repr__(self) -> str:
        return f"<MemoryServer {self._address}>"

    def _spawn_system(self, fn: Callable[[str], Any], arg: str) -> bool:
        if self.closing:
            return False
        try:
            self._nursery.start_soon(fn, arg)
        except RuntimeError:
            return False
        return True

    def _handler_started(self) -> None:
        self._running_handlers += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _handler_done(self) -> None:
        self._running_handlers -= 1
        if self._running_handlers == 0:
            self._idle.set()

    def _start_stream(self, entry: StreamMethod[Any, Any], call: MemoryCall) -> None:
        self._live.add(call)
        self._handler_started()
        self._nursery.start_soon(self._run_stream_handler, entry, call)

    async def _run_stream_handler(self, entry: StreamMethod[Any, Any], call: MemoryCall) -> None:
        outcome = HandlerOutcome(_SHUTDOWN_MSG)
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await run_handler(entry.handler, call.server, outcome)
        finally:
            self._scopes.discard(scope)
            call._server_finish(outcome.value)
            self._live.discard(call)
            self._handler_done()

    def _start_unary(
        self,
        entry: UnaryMethod[Any, Any],
        request: bytes,
        result: _UnaryResult,
        done: trio.Event,
        scope: trio.CancelScope,
    ) -> None:
        self._handler_started()
        self._nursery.start_soon(self._run_unary, entry, request, result, done, scope)

    async def _run_unary(
        self,
        entry: UnaryMethod[Any, Any],
        request: bytes,
        result: _UnaryResult,
        done: trio.Event,
        scope: trio.CancelScope,
    ) -> None:
        ending = HandlerOutcome(_SHUTDOWN_MSG, StatusCode.UNAVAILABLE)
        self._scopes.add(scope)
        try:
            with scope:
                response = await run_handler(unary_call(entry), request, ending)
                if response is not None:
                    result.response = response
            if scope.cancelled_caught and not self.closing:
                ending.value = Outcome(StatusCode.CANCELLED, _CLIENT_CANCEL_MSG)
        finally:
            self._scopes.discard(scope)
            result.outcome = ending.value
            done.set()
            self._handler_done()

    def _stop_listening(self) -> None:
        self.closing = True
        if self.network._listeners.get(self._address) is self:
            del self.network._listeners[self._address]
            self.network._trace_net("stop listening", self._address)

    def _terminate(self) -> None:
        self._stop_listening()
        for call in sorted(self._live, key=lambda c: c.id):
            call._trace("server shutdown")
            call._fail_both(Outcome(StatusCode.UNAVAILABLE, _SHUTDOWN_MSG), _SHUTDOWN_MSG)
        for scope in list(self._scopes):
            scope.cancel()

    async def _shutdown(self, grace: float) -> None:
        self._stop_listening()
        if grace > 0:
            with trio.move_on_after(grace):
                await self._idle.wait()
        self._terminate()


class MemoryChannel:
    """A client channel on a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self.network = network
        self.address = address
        self._closed = False
        self._calls: list[MemoryCall] = []

    def __repr__(self) -> str:
        return f"<MemoryChannel to {self.address}>"

    def _lookup(self, method: str, kind: type) -> tuple[MemoryServer | None, Any, Outcome | None]:
        server = self.network._listeners.get(self.address)
        if server is None or server.closing or self.network.closed:
            return (
                None,
                None,
                Outcome(
                    StatusCode.UNAVAILABLE, f"failed to connect: nobody listens on {self.address}"
                ),
            )
        entry = server._table.get(method)
        if not isinstance(entry, kind):
            return None, None, Outcome(StatusCode.UNIMPLEMENTED, "Method not found!")
        return server, entry, None

    def open_stream(
        self,
        method: str,
        serializer: Callable[[SendT], bytes],
        deserializer: Callable[[bytes], RecvT],
    ) -> MemoryStream[SendT, RecvT]:
        if self._closed:
            raise trio.ClosedResourceError("this channel is closed")
        if not isinstance(method, str):
            raise TypeError(f"method must be a str, not {type(method).__name__}")
        if not callable(serializer) or not callable(deserializer):
            raise TypeError("serializer and deserializer must be callable")
        server, entry, failure = self._lookup(method, StreamMethod)
        net = self.network
        call_id = next(net._ids)
        if failure is not None or server is None:
            call = MemoryCall(
                net, call_id, self.address, method, None, serializer, deserializer, _no_ser, _no_de
            )
            assert failure is not None
            net.trace.append(("open failed", call_id, self.address, method, failure.code.name))
            call.client._set_ending(failure)
            call.server._set_ending(failure)
            return call.client
        call = MemoryCall(
            net,
            call_id,
            self.address,
            method,
            server,
            serializer,
            deserializer,
            entry.response_serializer,
            entry.request_deserializer,
        )
        net.streams.append(call)
        net.trace.append(("open", call_id, self.address, method))
        for d in net.held_at_open:  # held before its first message (``hold_new``)
            call.hold(d)
        self._calls.append(call)
        server._start_stream(entry, call)
        net._lot.unpark_all()
        return call.client

    async def unary(
        self,
        method: str,
        request: ReqT,
        serializer: Callable[[ReqT], bytes],
        deserializer: Callable[[bytes], RespT],
        timeout: float | None = None,
    ) -> RespT:
        timeout = _check_timeout(timeout)
        if self._closed:
            raise trio.ClosedResourceError("this channel is closed")
        data = _check_bytes(serializer(request))
        call_id = next(self.network._ids)
        self.network.trace.append(("unary", call_id, self.address, method))
        server, entry, failure = self._lookup(method, UnaryMethod)
        if failure is not None or server is None:
            assert failure is not None
            await trio.lowlevel.checkpoint()
            self.network.trace.append(("unary done", call_id, failure.code.name))
            raise failure.exception()
        result = _UnaryResult()
        done = trio.Event()
        scope = trio.CancelScope()
        server._start_unary(entry, data, result, done, scope)
        try:
            with trio.move_on_after(timeout if timeout is not None else float("inf")) as waited:
                await done.wait()
        except BaseException:
            scope.cancel()
            raise
        if waited.cancelled_caught:
            scope.cancel()
            self.network.trace.append(("unary done", call_id, "DEADLINE_EXCEEDED"))
            raise StreamFailed(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        assert result.outcome is not None
        self.network.trace.append(("unary done", call_id, result.outcome.code.name))
        if not result.outcome.ok:
            raise result.outcome.exception()
        decoded = decode_or_outcome(deserializer, result.response, "client")
        if isinstance(decoded, Outcome):
            raise decoded.exception()
        return decoded

    async def aclose(self) -> None:
        """Close the channel: cancel its open streams (as their clients)."""
        if not self._closed:
            self._closed = True
            for call in self._calls:
                call._client_cancel(call.cancel_overtakes)
            self._calls.clear()
        await trio.lowlevel.checkpoint()


def _no_ser(message: object) -> bytes:
    raise RuntimeError("no server end")


def _no_de(data: bytes) -> object:
    raise RuntimeError("no server end")


class MemoryNetwork:
    """An in-memory network; implements the ``Transport`` protocol.

    ``eof_before_cancel`` and ``cancel_overtakes`` are the defaults for new calls (each
    :class:`MemoryCall` has its own copy to change). ``send_window`` (None: unbounded) is the
    most messages one end may have undelivered in its direction before ``send`` waits, like
    gRPC's flow-control window: with it, an end whose peer stops reading holds bounded memory.
    ``streams`` lists every stream RPC opened, in order; ``trace`` records every event, for
    determinism checks and debugging (both grow with the network's life: it is a test network).
    """

    def __init__(self, *, eof_before_cancel: bool = False, cancel_overtakes: bool = True,
                 send_window: int | None = None) -> None:
        self.eof_before_cancel = _check_bool("eof_before_cancel", eof_before_cancel)
        self.cancel_overtakes = _check_bool("cancel_overtakes", cancel_overtakes)
        if send_window is not None and (
            isinstance(send_window, bool) or not isinstance(send_window, int) or send_window < 1
        ):
            raise ValueError(f"send_window must be None or an int >= 1, got {send_window!r}")
        self.send_window = send_window
        self.streams: list[MemoryCall] = []
        #: directions every stream call opened from now on starts with held (``hold_new``)
        self.held_at_open: set[Direction] = set()
        self.trace: list[TraceEvent] = []
        self.closed = False
        self._listeners: dict[str, MemoryServer] = {}
        self._servers: list[MemoryServer] = []
        self._ids = itertools.count(1)
        self._next_port = 49152
        self._lot = trio.lowlevel.ParkingLot()

    def __repr__(self) -> str:
        return f"<MemoryNetwork: {len(self._listeners)} listening, {len(self.streams)} streams>"

    def hold_new(self, direction: Direction | str) -> None:
        """Every stream call opened from now on starts with ``direction`` held, so that even
        its first message waits (``release_new`` stops this; each such call is released as any
        other, with ``MemoryCall.release``)."""
        self.held_at_open.add(_direction(direction))

    def release_new(self, direction: Direction | str) -> None:
        self.held_at_open.discard(_direction(direction))

    def _trace_net(self, *event: object) -> None:
        self.trace.append(event)

    def _resolve(self, address: str) -> str:
        host, port = _split_host_port(address)
        if port != 0:
            return address
        while f"{host}:{self._next_port}" in self._listeners:
            self._next_port += 1
        resolved = f"{host}:{self._next_port}"
        self._next_port += 1
        return resolved

    @asynccontextmanager
    async def serve(
        self, address: str, handlers: Iterable[Handler], *, grace: float = 0.0,
        tls: ServerTLS | None = None,  # no wire to protect: accepted and ignored
    ) -> AsyncIterator[MemoryServer]:
        grace = _check_grace(grace)
        table = _check_handlers(handlers)
        if self.closed:
            raise RuntimeError("this MemoryNetwork is closed")
        resolved = self._resolve(address)
        if resolved in self._listeners:
            raise AddressInUseError(f"already listening on {resolved}")
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                server = MemoryServer(self, resolved, table, nursery)
                self._listeners[resolved] = server
                self._servers.append(server)
                self._trace_net("listen", resolved)
                try:
                    yield server
                except BaseException as exc:
                    body_error = exc
                    raise
                finally:
                    with trio.CancelScope(shield=True):
                        await server._shutdown(grace)
        except BaseExceptionGroup as group:
            _unwrap_body_error(group, body_error)
            raise

    @asynccontextmanager
    async def connect(
        self, address: str, *, tls: ClientTLS | None = None  # accepted and ignored, as serve's
    ) -> AsyncIterator[MemoryChannel]:
        _split_host_port(address)
        channel = MemoryChannel(self, address)
        try:
            yield channel
        finally:
            await channel.aclose()

    async def wait_for_stream(
        self, address: str | None = None, method: str | None = None, *, index: int = 0
    ) -> MemoryCall:
        """Wait until the ``index``-th (0-based) stream matching ``address``/``method`` exists."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, not {type(index).__name__}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a str or None, not {type(address).__name__}")
        if method is not None and not isinstance(method, str):
            raise TypeError(f"method must be a str or None, not {type(method).__name__}")
        await trio.lowlevel.checkpoint()
        while True:
            matching = [
                c
                for c in self.streams
                if (address is None or c.address == address)
                and (method is None or c.method == method)
            ]
            if len(matching) > index:
                return matching[index]
            await self._lot.park()

    def close(self) -> None:
        """Shut the whole network down: every server stops, every stream is torn down (clients
        see UNAVAILABLE, server ends CANCELLED), handler tasks are cancelled."""
        if self.closed:
            return
        self.closed = True
        self._trace_net("network close")
        for server in self._servers:
            server._terminate()
        for call in self.streams:
            call._fail_both(Outcome(StatusCode.UNAVAILABLE, "network closed"), "network closed")

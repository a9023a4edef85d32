"""The transport interface that peerkit's stream handlers are written against.

One job: define the contract (types, exceptions, and exactly what each stream method raises after
each kind of ending) that both implementations -- ``memory.py`` (trio memory channels, virtual time)
and ``grpc_bridge.py`` (real gRPC) -- obey, plus a few tiny helpers they share.
May import: the standard library and trio. Nothing from grpc, protobuf or the rest of peerkit.

Vocabulary
----------
An *RPC* has a client end and a server end; both are a :class:`BidiStream` with the same API.
The RPC's *ending* is an :class:`Outcome` (a status code plus message). Each end learns the ending
at its own time ("the ending is known at this end"):

* server end: when its handler returns (OK) or raises :class:`AbortStream` (that status), when it
  calls ``cancel()`` (CANCELLED), or when the client's cancel / a connection reset / server
  shutdown reaches it (CANCELLED);
* client end: when it calls ``cancel()`` (CANCELLED), or when the server's final status has arrived
  *and every message sent before it has been received* (gRPC only reports a client's status after
  its messages have been read), or on a connection failure (UNAVAILABLE).

The first ending known at an end is final; ``outcome`` never changes afterwards.

What each method does, by state of *this* end
---------------------------------------------

=====================================  ===================  ======================  ============
state                                  ``send``             ``receive``             ``close_send``
=====================================  ===================  ======================  ============
open                                   sends                next message (blocks)   half-closes
after own ``close_send()``             ClosedForSending     unchanged               no-op
peer half-closed (server end only)     sends                EndOfStream, repeatedly unchanged
ending known, OK                       EndOfStream          EndOfStream, repeatedly no-op
ending known, CANCELLED                StreamCancelled      StreamCancelled         no-op
ending known, other status             StreamFailed(c, m)   StreamFailed(c, m)      no-op
=====================================  ===================  ======================  ============

Rules behind the table:

* ``ClosedForSending`` wins over everything for ``send`` (it is a local usage error).
* A message that does not decode (its deserializer raises) never reaches the caller and never
  crashes the server: on a server end ``receive`` ends the RPC with INVALID_ARGUMENT and raises
  StreamFailed(INVALID_ARGUMENT); on a client end it cancels the RPC and raises
  StreamFailed(INTERNAL) (grpc-go's client reports such a message as INTERNAL too). A unary
  request that does not decode is answered INVALID_ARGUMENT without running the handler; a unary
  response that does not decode raises StreamFailed(INTERNAL) at the caller.
* ``receive`` returns every message the peer sent before its ending, then raises the ending; a
  *cancel* or *reset* may drop messages still in flight (the receiver then never sees them).
  After a local ``cancel()`` no further message is returned.
* A client whose server has stopped reading but whose final status is not known yet may see
  ``send`` succeed (the message is silently discarded -- as on the wire) or raise
  :class:`EndOfStream` ("the peer no longer accepts messages; ``receive`` tells how the RPC
  ended"). This is Go's ``Send`` returning ``io.EOF``.
* **Python gRPC servers see a client cancel as EOF first.** On a server end, ``receive`` may raise
  :class:`EndOfStream` for a client that in fact cancelled; the cancel is reported a moment later:
  ``outcome`` / ``await wait_finished()`` become CANCELLED and from then on ``send`` and
  ``receive`` raise :class:`StreamCancelled`. So on a server, EndOfStream is *provisional* until
  the RPC finishes. (The in-memory transport can reproduce this with ``eof_before_cancel``.)
* ``close_send()`` on a server end only forbids further sends: gRPC servers cannot half-close
  without ending the RPC, so the client sees EndOfStream when the handler *returns*.
* ``close_send()`` is idempotent, never raises because of how the RPC ended, and is not undone if
  the calling task is cancelled while it runs.
* ``cancel()`` is synchronous and idempotent. On a client end it cancels the RPC (the server sees
  StreamCancelled, possibly after EndOfStream). On a server end it ends the RPC with status
  CANCELLED (the client sees StreamCancelled after the messages already sent). If the ending is
  already known at this end, ``cancel()`` does nothing.
* ``aclose()`` is ``cancel()`` plus a checkpoint; ``async with stream:`` calls it on exit. (On a
  server end that means CANCELLED unless the handler already returned -- don't use it there.)
* ``wait_finished()`` waits until the ending is known at this end and returns it. On a server end,
  calling it from inside the handler after a genuine half-close waits forever (the RPC only ends
  when the handler returns); it is meant for EOF-vs-cancel questions and for code outside the
  handler.
* Two tasks calling ``receive`` (or two calling ``send``) on one end at the same time is an error:
  the second raises :class:`trio.BusyResourceError`.
* If the task calling ``receive`` is cancelled, no message is lost: the next ``receive`` returns
  it. If the task calling ``send`` is cancelled, the message may or may not have been sent
  (memory: not sent; gRPC: possibly sent).

Handlers
--------
``serve(address, handlers)`` takes :class:`StreamMethod` and :class:`UnaryMethod` entries keyed by
full method name ("/package.Service/Method") with their (de)serializers, so this layer never needs
generated code. A stream handler ``async def handler(stream) -> None`` runs once per RPC on the
server's own trio nursery:

* returning ends the RPC with OK;
* raising :class:`AbortStream` ends it with that status (client: StreamFailed(code, message), or
  StreamCancelled for code CANCELLED);
* letting a :class:`StreamFailed` (or StreamCancelled) escape ends the RPC with that status, like
  returning ``err`` in Go; the server keeps running;
* any other exception ends the RPC with UNKNOWN and then **crashes the server**: ``serve()`` exits
  with an exception group holding it (a test kit must not hide handler bugs).

The client of a client-cancelled RPC does not cancel the stream handler's task: the handler learns
of it from the stream (as in Go). Server shutdown does cancel handler tasks (trio.Cancelled), after
``grace`` seconds. A unary handler's task *is* cancelled when its caller cancels.

TLS
---
``serve(..., tls=ServerTLS(...))`` listens with TLS only (server authentication: no client
certificate is asked for, as upstream's peering never uses mutual TLS); ``connect(...,
tls=ClientTLS(...))`` verifies the server against the given roots and name. Without ``tls`` both
are plaintext. The in-memory network has no wire to protect and ignores both.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

import trio

__all__ = [
    "AbortStream",
    "AddressInUseError",
    "BidiStream",
    "Channel",
    "ClientTLS",
    "ClosedForSending",
    "EndOfStream",
    "Handler",
    "ListenError",
    "Outcome",
    "Server",
    "ServerTLS",
    "Side",
    "StatusCode",
    "StreamCancelled",
    "StreamFailed",
    "StreamMethod",
    "Transport",
    "TransportError",
    "UnaryMethod",
    "decode_or_outcome",
    "identity",
    "undecodable",
]

SendT = TypeVar("SendT")
RecvT = TypeVar("RecvT")
ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")

Side = Literal["client", "server"]


class StatusCode(enum.Enum):
    """gRPC status codes; names and numbers mirror ``grpc.StatusCode``."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class TransportError(Exception):
    """Base class of the errors a stream operation reports."""


class EndOfStream(TransportError):
    """No more messages: the peer half-closed, or (client) the RPC ended with status OK.

    Raised by ``send`` when the RPC ended OK, or when the peer no longer accepts messages and the
    final status is not known yet (``receive`` then reports it)."""


class ClosedForSending(TransportError):
    """``send`` after this end called ``close_send()``."""


class StreamFailed(TransportError):
    """The RPC ended with a non-OK status (``code``, ``message``)."""

    def __init__(self, code: StatusCode, message: str = "") -> None:
        if not isinstance(code, StatusCode):
            raise TypeError(f"code must be a StatusCode, not {type(code).__name__}")
        if code is StatusCode.OK:
            raise ValueError("StreamFailed needs a non-OK status code")
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name


class StreamCancelled(StreamFailed):
    """The RPC was cancelled (status CANCELLED): by either end, by a reset seen on a server, or by
    server shutdown seen by the handler. A subclass of StreamFailed with ``code`` CANCELLED, so
    catch it *before* StreamFailed when the two need different handling."""

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.CANCELLED, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,))


class AbortStream(Exception):
    """Raised by a handler to end its RPC with status ``code`` and ``message``."""

    def __init__(self, code: StatusCode, message: str = "") -> None:
        if not isinstance(code, StatusCode):
            raise TypeError(f"code must be a StatusCode, not {type(code).__name__}")
        if code is StatusCode.OK:
            raise ValueError("AbortStream needs a non-OK status code; return from the handler")
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, not {type(message).__name__}")
        super().__init__(code, message)
        self.code = code
        self.message = message


class ListenError(OSError):
    """``serve`` cannot listen on an address; the message says which address and why in one
    line (e.g. the host does not resolve, or ``address already in use``)."""


class AddressInUseError(ListenError):
    """``serve`` on an address that is already being listened on."""


@dataclass(frozen=True)
class Outcome:
    """How an RPC ended, as known at one end: a status code and message."""

    code: StatusCode
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code is StatusCode.OK

    @property
    def cancelled(self) -> bool:
        return self.code is StatusCode.CANCELLED

    def exception(self) -> TransportError:
        """The exception ``receive`` raises for this ending."""
        if self.code is StatusCode.OK:
            return EndOfStream()
        if self.code is StatusCode.CANCELLED:
            return StreamCancelled(self.message)
        return StreamFailed(self.code, self.message)


OK = Outcome(StatusCode.OK)


class BidiStream(ABC, Generic[SendT, RecvT]):
    """One end of a bidirectional stream RPC (client and server ends share this API).

    A client end sends requests and receives responses; a server end the reverse. See the module
    docstring for what each method raises after each kind of ending.
    """

    side: Side
    method: str

    def __init__(self) -> None:
        # The ending as known at this end: set once, by `_set_ending`, never changed after.
        self._ending: Outcome | None = None
        self._finished = trio.Event()

    @abstractmethod
    async def send(self, message: SendT) -> None:
        """Send one message. Raises ClosedForSending, EndOfStream, StreamCancelled, StreamFailed."""

    @abstractmethod
    async def receive(self) -> RecvT:
        """Next message. Raises EndOfStream, StreamCancelled, StreamFailed."""

    async def send_many(self, messages: Sequence[SendT],
                        on_progress: Callable[[], None] | None = None) -> None:
        """``send`` each message in order; the first that fails raises as ``send`` would, and
        the rest are not sent. A transport may hand them all over at once (the gRPC bridge
        crosses threads once per call, not once per message); this default sends one at a
        time. Nothing else differs: the same flow control paces it. ``on_progress()`` is
        called on the trio thread each time some of them have gone out (this default: after
        each one; the gRPC bridge: once, after all), so that a caller can tell a slow peer
        from a stalled one."""
        if not messages:
            await trio.lowlevel.checkpoint()
        for message in messages:
            await self.send(message)
            if on_progress is not None:
                on_progress()

    def receive_ready(self, limit: int) -> list[RecvT]:
        """Up to ``limit`` messages this end has already received and holds, in order, without
        waiting and without raising: an ending, or a message that does not decode, is left
        for ``receive`` to report. This default holds none (``receive`` is always needed)."""
        return []

    @abstractmethod
    async def close_send(self) -> None:
        """Half-close: no more messages from this end (idempotent, never raises for endings)."""

    @abstractmethod
    def cancel(self) -> None:
        """Cancel the RPC from this end (idempotent; no-op once the ending is known here)."""

    @property
    def outcome(self) -> Outcome | None:
        """The ending known at this end, or None while the RPC is still running here."""
        return self._ending

    def _set_ending(self, outcome: Outcome) -> None:
        """Record the ending (the first one wins) and wake `wait_finished`."""
        if self._ending is None:
            self._ending = outcome
            self._finished.set()

    async def wait_finished(self) -> Outcome:
        """Wait until the ending is known at this end, and return it."""
        await self._finished.wait()
        assert self._ending is not None
        return self._ending

    def _ending_exception(self) -> BaseException:
        """The exception that reports the (known) ending to a caller of send or receive."""
        assert self._ending is not None
        return self._ending.exception()

    async def aclose(self) -> None:
        """``cancel()`` if the RPC has not ended here, then checkpoint. Idempotent."""
        self.cancel()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RecvT:
        """``async for msg in stream`` receives until EndOfStream; other errors propagate."""
        try:
            return await self.receive()
        except EndOfStream:
            raise StopAsyncIteration from None


class HandlerOutcome:
    """How a server's handler ended, as the RPC's status (filled in by `run_handler`).

    Until the handler finishes the outcome says `code` (CANCELLED by default) with
    `shutdown_message`: that is what the client sees when the server is shut down around a
    running handler."""

    def __init__(self, shutdown_message: str, code: StatusCode = StatusCode.CANCELLED) -> None:
        self.value = Outcome(code, shutdown_message)


_R = TypeVar("_R")


async def run_handler(handler: Callable[[_R], Awaitable[Any]], arg: _R,
                      outcome: HandlerOutcome) -> Any:
    """Run a server handler (stream or unary) and record its ending in `outcome`, as both
    transports must: returning is OK; AbortStream and StreamFailed give their status;
    trio.Cancelled leaves the shutdown outcome; anything else is UNKNOWN and propagates (it is
    a bug in the handler). Returns what the handler returned (None if it did not finish)."""
    try:
        result = await handler(arg)
        outcome.value = OK
        return result
    except AbortStream as exc:
        outcome.value = Outcome(exc.code, exc.message)
    except StreamFailed as exc:
        outcome.value = Outcome(exc.code, exc.message)
    except trio.Cancelled:
        raise
    except BaseException as exc:
        outcome.value = Outcome(StatusCode.UNKNOWN,
                                f"handler raised {type(exc).__name__}: {exc}")
        raise
    return None


def undecodable(side: Side, error: Exception) -> Outcome:
    """The ending of an RPC whose peer sent a message that does not decode, as known at
    ``side``: a server rejects the request (INVALID_ARGUMENT); a client reports a broken
    response (INTERNAL)."""
    detail = str(error) or type(error).__name__
    if side == "server":
        return Outcome(StatusCode.INVALID_ARGUMENT,
                       f"the request message does not decode: {detail}")
    return Outcome(StatusCode.INTERNAL, f"the response message does not decode: {detail}")


def decode_or_outcome(deserializer: Callable[[bytes], _R], data: bytes,
                      side: Side) -> _R | Outcome:
    """``deserializer(data)``, or the RPC's ending (``undecodable``) if it raises. Any
    Exception counts: a deserializer's one job is to turn bytes into a message, so whatever it
    raises is about the bytes, which come from the network."""
    try:
        return deserializer(data)
    except Exception as exc:
        return undecodable(side, exc)


def unary_call(entry: UnaryMethod[Any, Any]) -> Callable[[bytes], Awaitable[bytes]]:
    """A unary method as bytes in, bytes out: deserialize (a request that does not decode is
    INVALID_ARGUMENT, and the handler does not run), run the handler, serialize (a serializer
    failure counts as the handler's, so it is UNKNOWN like any other bug)."""

    async def call(request: bytes) -> bytes:
        decoded = decode_or_outcome(entry.request_deserializer, request, "server")
        if isinstance(decoded, Outcome):
            raise AbortStream(decoded.code, decoded.message)
        result = await entry.handler(decoded)
        return _check_bytes(entry.response_serializer(result))

    return call


def _check_method_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"method name must be a str, not {type(name).__name__}")
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "" or not parts[1] or not parts[2]:
        raise ValueError(f"method name must look like '/package.Service/Method', got {name!r}")


def _check_callable(what: str, value: object) -> None:
    if not callable(value):
        raise TypeError(f"{what} must be callable, not {type(value).__name__}")


@dataclass(frozen=True)
class StreamMethod(Generic[ReqT, RespT]):
    """A bidirectional-stream method served by ``handler(stream)``.

    The handler's stream receives ``ReqT`` (decoded by ``request_deserializer``) and sends
    ``RespT`` (encoded by ``response_serializer``)."""

    name: str
    handler: Callable[[BidiStream[RespT, ReqT]], Awaitable[None]]
    request_deserializer: Callable[[bytes], ReqT]
    response_serializer: Callable[[RespT], bytes]

    def __post_init__(self) -> None:
        _check_method_name(self.name)
        _check_callable("handler", self.handler)
        _check_callable("request_deserializer", self.request_deserializer)
        _check_callable("response_serializer", self.response_serializer)


@dataclass(frozen=True)
class UnaryMethod(Generic[ReqT, RespT]):
    """A unary method served by ``await handler(request) -> response``."""

    name: str
    handler: Callable[[ReqT], Awaitable[RespT]]
    request_deserializer: Callable[[bytes], ReqT]
    response_serializer: Callable[[RespT], bytes]

    def __post_init__(self) -> None:
        _check_method_name(self.name)
        _check_callable("handler", self.handler)
        _check_callable("request_deserializer", self.request_deserializer)
        _check_callable("response_serializer", self.response_serializer)


Handler = StreamMethod[Any, Any] | UnaryMethod[Any, Any]


class Server(Protocol):
    """A listening server, as yielded by ``Transport.serve``."""

    @property
    def address(self) -> str:
        """The address clients connect to (with the real port when port 0 was asked for)."""
        ...


class Channel(Protocol):
    """A client connection to one address, as yielded by ``Transport.connect``.

    Connecting never fails by itself (gRPC channels are lazy); calls on a channel to an address
    nobody listens on fail with StreamFailed(UNAVAILABLE). Closing the channel cancels its open
    streams; ``open_stream`` afterwards raises trio.ClosedResourceError."""

    def open_stream(
        self,
        method: str,
        serializer: Callable[[SendT], bytes],
        deserializer: Callable[[bytes], RecvT],
    ) -> BidiStream[SendT, RecvT]:
        """Start a bidirectional-stream RPC; its server handler starts at once."""
        ...

    async def unary(
        self,
        method: str,
        request: ReqT,
        serializer: Callable[[ReqT], bytes],
        deserializer: Callable[[bytes], RespT],
        timeout: float | None = None,
    ) -> RespT:
        """Call a unary method. Raises StreamFailed (DEADLINE_EXCEEDED after ``timeout``
        seconds) or StreamCancelled. Cancelling the calling task cancels the RPC."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ServerTLS:
    """A server's TLS identity: its certificate chain and private key, both PEM. The key is
    left out of ``repr`` so that it cannot end up in a log line."""

    cert_chain_pem: bytes
    private_key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class ClientTLS:
    """How a client verifies a TLS server: the root CA certificates (PEM strings; the server's
    chain must lead to one of them) and the name its certificate must carry (empty: the host
    of the dialed address), as Go's ``tls.Config{RootCAs, ServerName}``."""

    root_pems: tuple[str, ...]
    server_name: str = ""

    def __post_init__(self) -> None:
        if not self.root_pems:
            raise ValueError("ClientTLS needs at least one root CA certificate")


class Transport(Protocol):
    """Server and client creation, so code can be handed "a transport" and work on either."""

    def serve(
        self, address: str, handlers: Iterable[Handler], *, grace: float = 0.0,
        tls: ServerTLS | None = None,
    ) -> AbstractAsyncContextManager[Server]:
        """Listen on ``address`` ("host:port"; port 0 picks a free port) until the block exits.

        On exit: stop accepting, give running RPCs ``grace`` seconds, then end the rest (clients
        see StreamFailed(UNAVAILABLE), handlers see StreamCancelled and are cancelled).
        Raises AddressInUseError if the address is taken, ListenError if it cannot listen there
        for another reason; a host name means every address it resolves to. With ``tls`` it
        accepts TLS connections only."""
        ...

    def connect(
        self, address: str, *, tls: ClientTLS | None = None
    ) -> AbstractAsyncContextManager[Channel]:
        """A channel to ``address``, closed when the block exits; with ``tls`` it speaks TLS
        and verifies the server (a failed verification makes calls fail UNAVAILABLE)."""
        ...


def identity(data: bytes) -> bytes:
    """Identity (de)serializer for ``bytes`` messages."""
    return data


# ---------------------------------------------------------------------------------------------
# Small helpers shared by the implementations (private).


def _check_bytes(data: object, what: str = "serializer") -> bytes:
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"{what} must return bytes, not {type(data).__name__}")
    return data


def _check_grace(grace: float) -> float:
    if isinstance(grace, bool) or not isinstance(grace, int | float):
        raise TypeError(f"grace must be a number of seconds, not {type(grace).__name__}")
    if grace < 0 or grace != grace:
        raise ValueError(f"grace must be >= 0, got {grace!r}")
    return float(grace)


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if timeout < 0 or timeout != timeout:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")
    return float(timeout)


def _check_handlers(handlers: Iterable[Handler]) -> dict[str, Handler]:
    table: dict[str, Handler] = {}
    for entry in handlers:
        if not isinstance(entry, StreamMethod | UnaryMethod):
            raise TypeError(
                f"handlers must be StreamMethod or UnaryMethod entries, not {type(entry).__name__}"
            )
        if entry.name in table:
            raise ValueError(f"method {entry.name!r} is registered twice")
        table[entry.name] = entry
    return table


def _split_host_port(address: str) -> tuple[str, int]:
    if not isinstance(address, str):
        raise TypeError(f"address must be a str, not {type(address).__name__}")
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address must look like 'host:port', got {address!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range in {address!r}")
    return host, port


def _unwrap_body_error(
    group: BaseExceptionGroup[BaseException], body: BaseException | None
) -> None:
    """If a nursery wrapped only the ``async with`` body's own exception, re-raise it bare."""
    if body is not None and len(group.exceptions) == 1 and group.exceptions[0] is body:
        raise body

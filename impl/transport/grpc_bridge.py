"""Real gRPC behind the transport interface: grpc.aio on one asyncio thread, bridged to trio.

One job: implement ``base.Transport`` over grpcio (python-stack.md route (d)), obeying the contract
in ``base.py``. May import: the standard library, trio, grpc (grpc.aio) and ``.base``. It must not
import trio_asyncio (that patches asyncio for the whole process).

Design
------
* A :class:`GrpcTransport` owns ONE daemon thread running an asyncio event loop. Every grpc.aio
  server, channel and call of that transport lives on that loop. No thread per stream, no polling.
* trio → asyncio: each operation is a small coroutine submitted with
  ``asyncio.run_coroutine_threadsafe``; the trio task waits on a ``trio.Event`` that the
  concurrent future's done-callback sets through ``TrioToken.run_sync_soon``.
* asyncio → trio: a grpc.aio handler coroutine asks trio (``run_sync_soon``) to start the trio
  handler in the server's nursery, then awaits an asyncio future that the trio side resolves
  (``loop.call_soon_threadsafe``) with the handler's outcome.
* Only bytes cross the thread boundary: (de)serializers run on the trio side, grpc is given none.
* Crossing threads costs more than a small message (python-stack.md §2), so the bridge crosses
  once per *batch* where it can (issue 10): a stream's first ``receive`` starts a reader task on
  the loop (:class:`_ReadAhead`) that keeps reading into a deque, at most ``READ_AHEAD``
  messages ahead (so flow control still holds the peer back). Once full, it reads again only
  when trio has taken it down to ``RESUME_AT``: resuming it at every message taken cost a
  crossing per message whenever trio consumed more slowly than the wire delivered (626 for
  1,000 messages in the bridge echo, 16 now). It wakes trio only when trio is waiting, and then
  once per wait: a waiting ``receive`` stays waiting until trio gets to run the wake, and while
  trio was busy (importing, or holding the GIL) the reader used to post a wake for every
  message it read meanwhile -- 95% of all crossings in a 1,000-service replication, each a
  ``run_sync_soon`` and a socket write on the loop thread plus a wake-up on the trio side
  (measured by counting them). ``receive`` and ``receive_ready`` take from the deque without
  crossing. ``send_many`` hands a list of messages over in one coroutine. Sends have no
  write-behind (``send`` returns once grpc.aio took the message): a server's ``cancel()`` must
  end the RPC at once even when the peer does not read, and the contract suite wants the
  messages sent before it delivered first, which a queue of unwritten messages could not give
  both of; replication already crosses once per batch of sends. A reader that read ahead never
  loses a message: the contract's rules hold as before (a cancelled ``receive`` leaves the
  messages queued, a local ``cancel()`` drops them).
* A trio-side cancel never cancels an in-flight grpc.aio read or write, because grpc.aio then
  cancels the whole RPC (measured, and visible in ``grpc/aio/_call.py``). Instead a cancelled
  ``receive`` leaves its read pending and the next ``receive`` collects it (no message is lost);
  a cancelled ``send`` lets its write finish; writes are serialized by an asyncio.Lock.
* Client writes bypass ``call.write()`` and use the call's ``_cython_call.send_serialized_message``
  (a private grpc.aio attribute; ``call.write()`` is used if it ever disappears). Reason, measured
  with grpcio 1.85.3: a ``call.write()`` that races a server which has already returned makes
  grpc.aio overwrite the call's status with INTERNAL "Internal error from Core" and lose the
  unread messages; the direct send just fails, and the real status (OK) and messages survive.
* Client cancel seen by a Python server: the handler's pending read completes as EOF first
  (``receive`` raises EndOfStream), then grpc.aio cancels the handler coroutine; the bridge turns
  that into ``outcome`` CANCELLED and StreamCancelled on later operations. The trio stream handler
  itself is not cancelled (it learns from the stream, as in Go). Server shutdown looks the same to
  the handler (EOF, then cancelled), and clients then see UNAVAILABLE.
* TLS: ``serve(..., tls=ServerTLS)`` binds with ``add_secure_port`` and
  ``ssl_server_credentials`` (no client certificates); ``connect(..., tls=ClientTLS)`` makes a
  ``secure_channel`` with the roots and ``grpc.ssl_target_name_override`` for the server name.
* Listening: ``serve("name:port")`` resolves the name itself and binds each resulting ip
  explicitly (IPv4 first), all or none; gRPC's own ``add_insecure_port("localhost:P")`` succeeds
  when any one address binds (e.g. only [::1] when 127.0.0.1:P is taken). Each ip is first bound
  with a plain socket so that a failure names its reason (``address already in use``).
* Shutdown order (python-stack.md §2.3): ``serve`` first awaits ``server.stop(grace)`` on the loop
  while the trio handlers are still alive (they can still finish), and only then cancels them;
  ``connect`` closes its grpc.aio channel (cancelling its calls); the transport then stops the
  loop, cancels leftover asyncio tasks, closes the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import socket
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import grpc
import grpc.aio
import trio

from .base import (
    AddressInUseError,
    BidiStream,
    ClientTLS,
    ClosedForSending,
    EndOfStream,
    Handler,
    HandlerOutcome,
    ListenError,
    Outcome,
    ServerTLS,
    StatusCode,
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

__all__ = ["GrpcChannel", "GrpcClientStream", "GrpcServer", "GrpcServerStream", "GrpcTransport"]

T = TypeVar("T")
SendT = TypeVar("SendT")
RecvT = TypeVar("RecvT")
ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")

LOOP_THREAD_NAME: Final = "peerkit-grpc-asyncio"
#: The most messages a stream's reader task holds that trio has not taken yet.
READ_AHEAD: Final = 64
#: A reader parked because it held READ_AHEAD messages reads again once trio has taken it
#: down to this many: one crossing per RESUME_AT messages taken, not one per message.
RESUME_AT: Final = READ_AHEAD // 2

_SHUTDOWN_MSG = "server shutting down"
_LOCAL_CANCEL_MSG = "cancelled locally"
_SERVER_CANCEL_MSG = "cancelled by the server"
_RPC_CANCELLED_MSG = "the RPC was cancelled (client cancel, connection loss or server shutdown)"
_TRANSPORT_CLOSED = Outcome(StatusCode.CANCELLED, "the gRPC transport was closed")
_NO_CALL = Outcome(StatusCode.CANCELLED, "the call could not be started (channel closing)")


def _to_grpc(code: StatusCode) -> grpc.StatusCode:
    return grpc.StatusCode[code.name]


def _from_grpc(code: grpc.StatusCode | None) -> StatusCode:
    if code is None:
        return StatusCode.UNKNOWN
    return StatusCode[code.name]


def _rpc_error_outcome(error: grpc.aio.AioRpcError) -> Outcome:
    return Outcome(_from_grpc(error.code()), error.details() or "")


def _own_task_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _NotAccepting:
    """A client write failed but the final status is not known yet."""


_NOT_ACCEPTING = _NotAccepting()


class _Eof:
    """A server read returned end-of-stream."""


_EOF = _Eof()


def _resolve(fut: asyncio.Future[T], value: T) -> None:
    """Loop thread: settle ``fut`` unless it is already settled (or was cancelled)."""
    if not fut.done():
        fut.set_result(value)


class _LoopThread:
    """The asyncio event loop thread of one transport, and the trio <-> asyncio hand-offs."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.loop = asyncio.new_event_loop()
        self.closed = False
        self._stopped = trio.Event()
        self._thread = threading.Thread(target=self._main, name=LOOP_THREAD_NAME, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            self.to_trio(self._stopped.set)

    # -- called on the loop thread --------------------------------------------------------

    def to_trio(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` on the trio thread soon. False if the trio run is over."""
        try:
            self.token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    # -- called on the trio thread --------------------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self.closed:
            coro.close()
            raise trio.ClosedResourceError("the gRPC transport is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[..., object], *args: object) -> None:
        if self.closed:
            return
        with suppress(RuntimeError):  # the loop is already closed
            self.loop.call_soon_threadsafe(fn, *args)

    async def wait(
        self, fut: concurrent.futures.Future[T], *, cancel_on_abort: bool = False
    ) -> concurrent.futures.Future[T]:
        """Wait (from trio) until ``fut`` is done; returns it. If the trio task is cancelled
        first, ``fut`` is left running unless ``cancel_on_abort``."""
        if fut.done():
            await trio.lowlevel.checkpoint()
            return fut
        event = trio.Event()
        token = self.token

        def wake(_: object) -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

        fut.add_done_callback(wake)
        try:
            await event.wait()
        except trio.Cancelled:
            if cancel_on_abort:
                fut.cancel()
            raise
        return fut

    async def run(self, coro: Coroutine[Any, Any, T], *, cancel_on_abort: bool = False) -> T:
        fut = await self.wait(self.submit(coro), cancel_on_abort=cancel_on_abort)
        return fut.result()

    async def stop(self) -> None:
        if self.closed:
            return
        self.closed = True
        with suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            await self._stopped.wait()
        self._thread.join(timeout=5)


class _ReadAhead:
    """A stream's reader task on the loop thread and the deque it fills, taken from by trio.

    The loop thread appends what ``read()`` returns: bytes, then one final non-bytes item (how
    the inbound side ended). Trio pops. The two sides share only the deque (its appends and
    pops are atomic) and two flags, each set by one side and checked by the other after its
    own change, so no wake-up is lost: trio sets ``_waiter`` before it looks at the deque, the
    reader looks at ``_waiter`` after it appended; the reader sets ``_parked`` before it looks
    at the deque's length, trio looks at ``_parked`` after it popped."""

    def __init__(self, lt: _LoopThread, read: Callable[[], Coroutine[Any, Any, object]]) -> None:
        self._lt = lt
        self._read = read
        self.items: deque[object] = deque()
        self.exhausted = False  # trio took the final item
        self._final_queued = False
        self._waiter: trio.Event | None = None
        self._woken: trio.Event | None = None  # loop thread: the last waiter it woke
        self._parked = False
        self._space: asyncio.Event | None = None  # loop thread
        self._in_space_wait = False  # loop thread: parked, not inside a read
        self._released = False  # loop thread: read nothing more from the RPC
        fut = lt.submit(self._aio_run())
        token = lt.token

        def finished(_: object) -> None:  # loop thread (or the caller, if already done)
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(self._reader_finished)

        fut.add_done_callback(finished)

    # -- loop thread --------------------------------------------------------------------

    async def _aio_run(self) -> None:
        self._space = asyncio.Event()
        while True:
            while len(self.items) >= READ_AHEAD and not self._released:
                self._space.clear()
                self._parked = True
                if len(self.items) < READ_AHEAD:
                    break
                self._in_space_wait = True
                try:
                    await self._space.wait()
                finally:
                    self._in_space_wait = False
            result = await self._read()
            if not isinstance(result, bytes):
                self._final_queued = True
            self.items.append(result)
            waiter = self._waiter
            if waiter is not None and waiter is not self._woken:
                # one wake per wait: until trio runs it, the same waiter stays set, and a
                # wake per message read meanwhile was 95% of all wakes (issue 10)
                self._woken = waiter
                self._lt.to_trio(waiter.set)
            if not isinstance(result, bytes):
                return

    def _aio_space(self) -> None:
        if self._space is not None:
            self._space.set()

    def _aio_release(self) -> None:
        """The ending is known here: a reader parked for space reads no more from the RPC
        (its final item is then a placeholder: the known ending is what trio reports)."""
        if self._in_space_wait and self._space is not None:
            self._released = True
            self._read = _closed_read
            self._space.set()

    # -- trio thread ----------------------------------------------------------------------

    def _reader_finished(self) -> None:
        """The reader task is over; if it never queued a final item (the loop was stopped
        first), the transport was closed."""
        if not self._final_queued:
            self._final_queued = True
            self.items.append(_TRANSPORT_CLOSED)
        if self._waiter is not None:
            self._waiter.set()

    def _took(self) -> None:
        if self._parked and len(self.items) <= RESUME_AT:
            self._parked = False
            self._lt.call_soon(self._aio_space)

    async def next(self) -> object:
        """The next item, waiting for one (cancellable: nothing is lost)."""
        waited = False
        while not self.items:
            event = trio.Event()
            self._waiter = event
            try:
                if not self.items:
                    await event.wait()
                    waited = True
            finally:
                self._waiter = None
        if not waited:
            await trio.lowlevel.checkpoint()
        item = self.items.popleft()
        if not isinstance(item, bytes):
            self.exhausted = True
        self._took()
        return item

    def ready(self, limit: int) -> list[bytes]:
        """Up to ``limit`` messages already read (never the final item)."""
        out: list[bytes] = []
        while len(out) < limit and self.items and isinstance(self.items[0], bytes):
            out.append(self.items.popleft())  # type: ignore[arg-type]
        if out:
            self._took()
        return out

    def unread(self, data: bytes) -> None:
        """Put back a message taken by ``ready`` (it did not decode: ``receive`` reports it)."""
        self.items.appendleft(data)

    def release(self) -> None:
        self._lt.call_soon(self._aio_release)


async def _closed_read() -> Outcome:
    return _TRANSPORT_CLOSED


def _ready_messages(inbox: _ReadAhead | None, limit: int,
                    deserializer: Callable[[bytes], RecvT]) -> list[RecvT]:
    """``receive_ready`` of either end: decoded messages already read; stops before one
    that does not decode (left for ``receive``, which ends the RPC as the contract says)."""
    if inbox is None or limit <= 0:
        return []
    out: list[RecvT] = []
    taken = inbox.ready(limit)
    for i, data in enumerate(taken):
        try:
            out.append(deserializer(data))
        except Exception:
            for rest in reversed(taken[i:]):
                inbox.unread(rest)
            break
    return out


def _outcome_or_closed(fut: concurrent.futures.Future[T]) -> T | Outcome:
    """The result of an operation future; a future cancelled by loop shutdown means "closed"."""
    try:
        return fut.result()
    except concurrent.futures.CancelledError:
        return _TRANSPORT_CLOSED


# ------------------------------------------------------------------------------------------
# Server side


class GrpcServerStream(BidiStream[SendT, RecvT]):
    """The server end of one stream RPC (created on the loop thread, used from trio)."""

    side = "server"

    def __init__(
        self,
        lt: _LoopThread,
        entry: StreamMethod[Any, Any],
        context: grpc.aio.ServicerContext[Any, Any],
        done: asyncio.Future[Outcome],
    ) -> None:
        self.method = entry.name
        self._lt = lt
        self._context = context
        self._done = done
        self._serializer: Callable[[SendT], bytes] = entry.response_serializer
        self._deserializer: Callable[[bytes], RecvT] = entry.request_deserializer
        super().__init__()
        self._inbound_eof = False
        self._send_closed = False
        self._receiving = False
        self._sending = False
        self._inbox: _ReadAhead | None = None
        self._write_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<GrpcServerStream {self.method} outcome={self._ending}>"

    def _set_ending(self, outcome: Outcome) -> None:
        super()._set_ending(outcome)
        if self._inbox is not None:
            self._inbox.release()

    # trio thread, posted by the loop thread
    def _rpc_cancelled(self) -> None:
        self._set_ending(Outcome(StatusCode.CANCELLED, _RPC_CANCELLED_MSG))

    def _handler_done(self, outcome: Outcome) -> None:
        self._set_ending(outcome)
        self._lt.call_soon(_resolve, self._done, outcome)

    # loop thread
    async def _aio_read(self) -> bytes | _Eof | Outcome:
        try:
            message = await self._context.read()
        except asyncio.CancelledError:
            if _own_task_cancelled():
                raise
            return Outcome(StatusCode.CANCELLED, _RPC_CANCELLED_MSG)
        except Exception as exc:
            return Outcome(StatusCode.CANCELLED, f"{_RPC_CANCELLED_MSG}: {exc!r}")
        if isinstance(message, bytes):
            return message
        return _EOF  # grpc.aio.EOF: the client half-closed (or cancelled: see the module doc)

    async def _aio_write(self, datas: list[bytes]) -> Outcome | None:
        async with self._write_lock:
            try:
                for data in datas:
                    await self._context.write(data)
            except asyncio.CancelledError:
                if _own_task_cancelled():
                    raise
                return Outcome(StatusCode.CANCELLED, _RPC_CANCELLED_MSG)
            except Exception as exc:
                return Outcome(StatusCode.CANCELLED, f"{_RPC_CANCELLED_MSG}: {exc!r}")
            return None

    def _receive_error(self) -> BaseException | None:
        if self._ending is not None and not self._ending.ok:
            return self._ending.exception()
        if self._inbound_eof or self._ending is not None:
            return EndOfStream()
        return None

    async def receive(self) -> RecvT:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            inbox = self._inbox
            if inbox is None or inbox.exhausted or (
                    self._ending is not None and not self._ending.ok):
                error = self._receive_error() or EndOfStream()
                if inbox is None and self._receive_error() is None:
                    self._inbox = inbox = _ReadAhead(self._lt, self._aio_read)
                else:
                    await trio.lowlevel.checkpoint()
                    raise error
            result = await inbox.next()
        finally:
            self._receiving = False
        if self._ending is not None and not self._ending.ok:
            raise self._ending.exception()
        if isinstance(result, bytes):
            decoded = decode_or_outcome(self._deserializer, result, "server")
            if not isinstance(decoded, Outcome):
                return decoded
            # end the RPC with INVALID_ARGUMENT now (the handler learns it from the stream)
            self._handler_done(decoded)
            raise decoded.exception()
        if isinstance(result, _Eof):
            self._inbound_eof = True
            raise EndOfStream()
        assert isinstance(result, Outcome)
        self._set_ending(result)
        raise self._ending_exception()

    def receive_ready(self, limit: int) -> list[RecvT]:
        if self._receiving or (self._ending is not None and not self._ending.ok):
            return []
        return _ready_messages(self._inbox, limit, self._deserializer)

    async def send(self, message: SendT) -> None:
        await self.send_many((message,))

    async def send_many(self, messages: Sequence[SendT],
                        on_progress: Callable[[], None] | None = None) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._send_closed:
            await trio.lowlevel.checkpoint()
            raise ClosedForSending()
        if self._ending is not None:
            await trio.lowlevel.checkpoint()
            raise self._ending.exception()
        datas = [_check_bytes(self._serializer(m)) for m in messages]
        if not datas:
            await trio.lowlevel.checkpoint()
            return
        self._sending = True
        try:
            fut = await self._lt.wait(self._lt.submit(self._aio_write(datas)))
        finally:
            self._sending = False
        result = _outcome_or_closed(fut)
        if result is None:
            if on_progress is not None:
                on_progress()
            return
        self._set_ending(result)
        raise self._ending_exception()

    async def close_send(self) -> None:
        # gRPC servers cannot half-close without ending the RPC: only forbid further sends.
        self._send_closed = True
        await trio.lowlevel.checkpoint()

    def cancel(self) -> None:
        if self._ending is not None:
            return
        outcome = Outcome(StatusCode.CANCELLED, _SERVER_CANCEL_MSG)
        self._set_ending(outcome)
        self._lt.call_soon(_resolve, self._done, outcome)


class _UnaryJob:
    def __init__(self, entry: UnaryMethod[Any, Any], request: bytes) -> None:
        self.entry = entry
        self.request = request
        self.scope = trio.CancelScope()
        self.cancelled_by_client = False
        self.done: asyncio.Future[tuple[Outcome, bytes]] | None = None

    def client_cancelled(self) -> None:  # trio thread
        self.cancelled_by_client = True
        self.scope.cancel()


class GrpcServer:
    """A running grpc.aio server whose handlers run in a trio nursery."""

    def __init__(self, transport: GrpcTransport, table: dict[str, Handler]) -> None:
        self._transport = transport
        self._lt = transport._loop_thread()
        self._table = table
        self._address = ""
        self._port = 0
        self._aio: grpc.aio.Server | None = None
        self._nursery: trio.Nursery | None = None
        self._scopes: set[trio.CancelScope] = set()
        self.closing = False

    @property
    def address(self) -> str:
        return self._address

    @property
    def port(self) -> int:
        return self._port

    def __repr__(self) -> str:
        return f"<GrpcServer {self._address}>"

    # ---- loop thread ------------------------------------------------------------------

    def _generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
        for name, entry in self._table.items():
            service, method = name[1:].split("/")
            services.setdefault(service, {})[method] = self._method_handler(entry)
        return [grpc.method_handlers_generic_handler(s, m) for s, m in services.items()]

    def _method_handler(self, entry: Handler) -> grpc.RpcMethodHandler[Any, Any]:
        if isinstance(entry, StreamMethod):
            stream_entry = entry

            async def stream_behavior(
                _requests: object, context: grpc.aio.ServicerContext[Any, Any]
            ) -> None:
                await self._aio_stream(stream_entry, context)

            return grpc.stream_stream_rpc_method_handler(stream_behavior)
        unary_entry = entry

        async def unary_behavior(
            request: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> bytes:
            return await self._aio_unary(unary_entry, request, context)

        return grpc.unary_unary_rpc_method_handler(unary_behavior)

    async def _aio_bind(
        self, address: str, targets: Sequence[tuple[int, str]], port: int,
        options: Sequence[tuple[str, Any]], tls: ServerTLS | None,
    ) -> int:
        """Bind every one of ``targets`` (family, ip) on ``port`` (0: the first bind picks one,
        the others use it), or none: gRPC's own ``add_insecure_port("localhost:P")`` succeeds
        if any one resolved address binds, so it is given one ip at a time. Each ip is first
        bound with a plain socket, so a failure says why (gRPC only says that it failed).
        On a failure the ports bound so far are released: an unstarted grpc.aio server keeps
        them open even when stopped or collected (measured, grpcio 1.85.3), so it is started
        with no handlers (an RPC in that instant gets UNIMPLEMENTED) and stopped at once."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *options])
        # TLS only, no client certificate: the peer stream authenticates the dialer by its
        # stream secret, and upstream never uses mutual TLS for peering (specs/security.md)
        credentials = None if tls is None else grpc.ssl_server_credentials(
            [(tls.private_key_pem, tls.cert_chain_pem)])
        bound_any = False
        try:
            for family, ip in targets:
                where = _join_host_port(ip, port)
                _probe_bind(address, where, family, ip, port)  # port 0: is the ip assignable?
                try:
                    bound = (server.add_insecure_port(where) if credentials is None
                             else server.add_secure_port(where, credentials))
                except RuntimeError:
                    bound = 0
                if bound == 0 or (port != 0 and bound != port):
                    raise ListenError(f"cannot listen on {_naming(address, where)}: "
                                      "gRPC could not bind it")
                port, bound_any = bound, True
        except BaseException:
            if bound_any:
                await server.start()
                await server.stop(None)
            raise
        server.add_generic_rpc_handlers(self._generic_handlers())
        self._aio = server
        return port

    async def _aio_start(self) -> None:
        assert self._aio is not None
        await self._aio.start()

    async def _aio_stop(self, grace: float | None) -> None:
        if self._aio is not None:
            await self._aio.stop(grace)

    async def _aio_stream(
        self, entry: StreamMethod[Any, Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        stream: GrpcServerStream[Any, Any] = GrpcServerStream(self._lt, entry, context, done)
        if not self._lt.to_trio(self._spawn_stream, entry, stream):
            await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTDOWN_MSG)
        try:
            outcome = await done
        except asyncio.CancelledError:
            self._lt.to_trio(stream._rpc_cancelled)
            raise
        if not outcome.ok:
            await context.abort(_to_grpc(outcome.code), outcome.message)

    async def _aio_unary(
        self,
        entry: UnaryMethod[Any, Any],
        request: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> bytes:
        job = _UnaryJob(entry, bytes(request))
        job.done = asyncio.get_running_loop().create_future()
        if not self._lt.to_trio(self._spawn_unary, job):
            await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTDOWN_MSG)
        try:
            outcome, response = await job.done
        except asyncio.CancelledError:
            self._lt.to_trio(job.client_cancelled)
            raise
        if not outcome.ok:
            await context.abort(_to_grpc(outcome.code), outcome.message)
        return response

    # ---- trio thread --------------------------------------------------------------------

    def _spawn_stream(
        self, entry: StreamMethod[Any, Any], stream: GrpcServerStream[Any, Any]
    ) -> None:
        if self.closing or self._nursery is None:
            stream._handler_done(Outcome(StatusCode.UNAVAILABLE, _SHUTDOWN_MSG))
            return
        self._nursery.start_soon(self._run_stream, entry, stream)

    async def _run_stream(
        self, entry: StreamMethod[Any, Any], stream: GrpcServerStream[Any, Any]
    ) -> None:
        outcome = HandlerOutcome(_SHUTDOWN_MSG)
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await run_handler(entry.handler, stream, outcome)
        finally:
            self._scopes.discard(scope)
            stream._handler_done(outcome.value)

    def _spawn_unary(self, job: _UnaryJob) -> None:
        if self.closing or self._nursery is None:
            self._finish_unary(job, Outcome(StatusCode.UNAVAILABLE, _SHUTDOWN_MSG), b"")
            return
        self._nursery.start_soon(self._run_unary, job)

    def _finish_unary(self, job: _UnaryJob, outcome: Outcome, response: bytes) -> None:
        assert job.done is not None
        self._lt.call_soon(_resolve, job.done, (outcome, response))

    async def _run_unary(self, job: _UnaryJob) -> None:
        response = b""
        self._scopes.add(job.scope)
        ending = HandlerOutcome(_SHUTDOWN_MSG, StatusCode.UNAVAILABLE)
        try:
            with job.scope:
                response = await run_handler(unary_call(job.entry), job.request, ending) or b""
            if job.cancelled_by_client:
                ending.value = Outcome(StatusCode.CANCELLED, "cancelled by the client")
        finally:
            self._scopes.discard(job.scope)
            self._finish_unary(job, ending.value, response)

    async def _shutdown(self, grace: float) -> None:
        """Stop gRPC first (handlers still alive during ``grace``), then cancel handlers."""
        self.closing = True
        try:
            if self._aio is not None and not self._lt.closed:
                with trio.move_on_after(grace + 30):
                    await self._lt.run(self._aio_stop(grace))
        finally:
            for scope in list(self._scopes):
                scope.cancel()
            self._aio = None


# ------------------------------------------------------------------------------------------
# Client side


class GrpcClientStream(BidiStream[SendT, RecvT]):
    """The client end of one stream RPC."""

    side = "client"

    def __init__(
        self,
        lt: _LoopThread,
        method: str,
        serializer: Callable[[SendT], bytes],
        deserializer: Callable[[bytes], RecvT],
    ) -> None:
        self.method = method
        self._lt = lt
        self._serializer = serializer
        self._deserializer = deserializer
        super().__init__()
        self._cancelled_locally = False
        self._send_closed = False
        self._receiving = False
        self._sending = False
        self._inbox: _ReadAhead | None = None
        # loop-thread state
        self._call: grpc.aio.StreamStreamCall[bytes, bytes] | None = None
        self._status_task: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<GrpcClientStream {self.method} outcome={self._ending}>"

    def _set_ending(self, outcome: Outcome) -> None:
        super()._set_ending(outcome)
        if self._inbox is not None:
            self._inbox.release()

    # ---- loop thread --------------------------------------------------------------------

    def _aio_start(self, channel: grpc.aio.Channel) -> None:
        multi: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(self.method)
        try:
            call = multi()
        except Exception:  # e.g. the channel is closing: operations then report _NO_CALL
            return
        self._call = call
        call.add_done_callback(self._aio_on_done)

    def _aio_on_done(self, call: object) -> None:
        self._status_task = asyncio.ensure_future(self._aio_report_status())

    async def _aio_report_status(self) -> None:
        outcome = await self._aio_status()
        self._lt.to_trio(self._set_ending, outcome)

    async def _aio_status(self) -> Outcome:
        assert self._call is not None
        code = await self._call.code()
        details = await self._call.details()
        return Outcome(_from_grpc(code), details or "")

    def _aio_cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()

    async def _aio_read(self) -> bytes | Outcome:
        call = self._call
        if call is None:
            return _NO_CALL
        try:
            message = await call.read()
        except asyncio.CancelledError:
            if _own_task_cancelled():
                raise
            return Outcome(StatusCode.CANCELLED, _LOCAL_CANCEL_MSG)
        except grpc.aio.AioRpcError as exc:
            return _rpc_error_outcome(exc)
        if isinstance(message, bytes):
            return message
        # grpc.aio.EOF: the server finished with OK (a failure raises AioRpcError instead)
        return await self._aio_status()

    async def _aio_write(self, datas: list[bytes]) -> Outcome | _NotAccepting | None:
        call = self._call
        if call is None:
            return _NO_CALL
        async with self._write_lock:
            try:
                await call.wait_for_connection()
                for data in datas:
                    if call.done():
                        return await self._aio_status()
                    raw_call = getattr(call, "_cython_call", None)
                    direct_send = getattr(raw_call, "send_serialized_message", None)
                    if direct_send is not None:
                        await direct_send(data)
                    else:  # pragma: no cover - only if grpc.aio's internals change
                        await call.write(data)
            except asyncio.CancelledError:
                if _own_task_cancelled():
                    raise
                return Outcome(StatusCode.CANCELLED, _LOCAL_CANCEL_MSG)
            except grpc.aio.AioRpcError as exc:
                return _rpc_error_outcome(exc)
            except Exception:
                if call.done():
                    return await self._aio_status()
                return _NOT_ACCEPTING
            return None

    async def _aio_done_writing(self) -> None:
        call = self._call
        if call is None:
            return
        async with self._write_lock:
            try:
                await call.done_writing()
            except asyncio.CancelledError:
                if _own_task_cancelled():
                    raise
            except Exception:
                pass

    # ---- trio thread --------------------------------------------------------------------

    async def receive(self) -> RecvT:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            inbox = self._inbox
            if inbox is None or inbox.exhausted or self._cancelled_locally:
                if self._ending is not None:
                    await trio.lowlevel.checkpoint()
                    raise self._ending.exception()
                if inbox is None:
                    self._inbox = inbox = _ReadAhead(self._lt, self._aio_read)
                else:  # pragma: no cover - an exhausted reader has set the ending
                    await trio.lowlevel.checkpoint()
                    raise EndOfStream()
            result = await inbox.next()
        finally:
            self._receiving = False
        if self._cancelled_locally:
            raise self._ending_exception()
        if isinstance(result, bytes):
            decoded = decode_or_outcome(self._deserializer, result, "client")
            if not isinstance(decoded, Outcome):
                return decoded
            self._abandon(decoded)
            raise decoded.exception()
        assert isinstance(result, Outcome)
        self._set_ending(result)
        raise self._ending_exception()

    def receive_ready(self, limit: int) -> list[RecvT]:
        if self._receiving or self._cancelled_locally:
            return []
        return _ready_messages(self._inbox, limit, self._deserializer)

    async def send(self, message: SendT) -> None:
        await self.send_many((message,))

    async def send_many(self, messages: Sequence[SendT],
                        on_progress: Callable[[], None] | None = None) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._send_closed:
            await trio.lowlevel.checkpoint()
            raise ClosedForSending()
        if self._ending is not None:
            await trio.lowlevel.checkpoint()
            raise self._ending.exception()
        datas = [_check_bytes(self._serializer(m)) for m in messages]
        if not datas:
            await trio.lowlevel.checkpoint()
            return
        self._sending = True
        try:
            fut = await self._lt.wait(self._lt.submit(self._aio_write(datas)))
        finally:
            self._sending = False
        result = _outcome_or_closed(fut)
        if result is None:
            if on_progress is not None:
                on_progress()
            return
        if self._cancelled_locally:
            raise self._ending_exception()
        if isinstance(result, _NotAccepting):
            raise EndOfStream(
                "the server no longer accepts messages; receive() reports how the RPC ended"
            )
        self._set_ending(result)
        raise self._ending_exception()

    async def close_send(self) -> None:
        if self._send_closed or self._ending is not None:
            self._send_closed = True
            await trio.lowlevel.checkpoint()
            return
        self._send_closed = True
        await self._lt.wait(self._lt.submit(self._aio_done_writing()))

    def cancel(self) -> None:
        self._abandon(Outcome(StatusCode.CANCELLED, _LOCAL_CANCEL_MSG))

    def _abandon(self, outcome: Outcome) -> None:
        """Cancel the RPC, knowing its ending here as ``outcome`` (a local cancel, or a
        response that does not decode)."""
        if self._ending is not None:
            return
        self._cancelled_locally = True
        self._set_ending(outcome)
        self._lt.call_soon(self._aio_cancel)


class GrpcChannel:
    """A grpc.aio channel to one address (plaintext, or TLS when ``connect`` was given it)."""

    def __init__(self, lt: _LoopThread, aio: grpc.aio.Channel, address: str) -> None:
        self.address = address
        self._lt = lt
        self._aio = aio
        self._closed = False
        self._streams: weakref.WeakSet[GrpcClientStream[Any, Any]] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"<GrpcChannel to {self.address}>"

    def open_stream(
        self,
        method: str,
        serializer: Callable[[SendT], bytes],
        deserializer: Callable[[bytes], RecvT],
    ) -> GrpcClientStream[SendT, RecvT]:
        if self._closed or self._lt.closed:
            raise trio.ClosedResourceError("this channel is closed")
        if not isinstance(method, str):
            raise TypeError(f"method must be a str, not {type(method).__name__}")
        if not callable(serializer) or not callable(deserializer):
            raise TypeError("serializer and deserializer must be callable")
        stream: GrpcClientStream[SendT, RecvT] = GrpcClientStream(
            self._lt, method, serializer, deserializer
        )
        self._streams.add(stream)
        self._lt.call_soon(stream._aio_start, self._aio)
        return stream

    async def _aio_unary(self, method: str, data: bytes, timeout: float | None) -> bytes | Outcome:
        multi: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._aio.unary_unary(method)
        call = multi(data, timeout=timeout)
        try:
            response = await call
        except asyncio.CancelledError:
            if _own_task_cancelled():
                raise
            return Outcome(StatusCode.CANCELLED, _LOCAL_CANCEL_MSG)
        except grpc.aio.AioRpcError as exc:
            return _rpc_error_outcome(exc)
        return bytes(response)

    async def unary(
        self,
        method: str,
        request: ReqT,
        serializer: Callable[[ReqT], bytes],
        deserializer: Callable[[bytes], RespT],
        timeout: float | None = None,
    ) -> RespT:
        timeout = _check_timeout(timeout)
        if self._closed or self._lt.closed:
            raise trio.ClosedResourceError("this channel is closed")
        if not isinstance(method, str):
            raise TypeError(f"method must be a str, not {type(method).__name__}")
        data = _check_bytes(serializer(request))
        fut = await self._lt.wait(
            self._lt.submit(self._aio_unary(method, data, timeout)), cancel_on_abort=True
        )
        result = _outcome_or_closed(fut)
        if isinstance(result, bytes):
            decoded = decode_or_outcome(deserializer, result, "client")
            if not isinstance(decoded, Outcome):
                return decoded
            result = decoded
        raise result.exception()

    async def _aio_close(self) -> None:
        await self._aio.close()

    async def aclose(self) -> None:
        """Close the channel: cancel its open streams, then close the grpc.aio channel."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        for stream in list(self._streams):
            stream.cancel()
        if not self._lt.closed:
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                await self._lt.run(self._aio_close())


async def _aio_make_channel(
    address: str, options: Sequence[tuple[str, Any]], tls: ClientTLS | None
) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    credentials = grpc.ssl_channel_credentials(
        root_certificates="".join(_pem_with_newline(p) for p in tls.root_pems).encode())
    if tls.server_name:
        # the name the certificate must carry (and the SNI), instead of the dialed host: Go's
        # tls.Config.ServerName
        options = [("grpc.ssl_target_name_override", tls.server_name), *options]
    return grpc.aio.secure_channel(address, credentials, options=list(options))


def _pem_with_newline(pem: str) -> str:
    # concatenated PEMs need a line break between them (upstream: lib.EnsureTrailingNewline)
    return pem if pem.endswith("\n") else pem + "\n"


class GrpcTransport:
    """Real gRPC transport: ``async with GrpcTransport() as transport: ...``.

    Entering starts the asyncio loop thread; leaving stops whatever servers and channels are still
    open, then the loop, and joins the thread. ``serve`` and ``connect`` must be used inside.
    """

    def __init__(
        self,
        *,
        server_options: Sequence[tuple[str, Any]] = (),
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._server_options = tuple(server_options)
        self._channel_options = tuple(channel_options)
        self._lt: _LoopThread | None = None
        self._servers: set[GrpcServer] = set()
        self._channels: set[GrpcChannel] = set()

    def __repr__(self) -> str:
        state = "running" if self._lt is not None and not self._lt.closed else "not running"
        return f"<GrpcTransport {state}>"

    @property
    def thread(self) -> threading.Thread | None:
        """The asyncio loop thread (for tests)."""
        return None if self._lt is None else self._lt._thread

    def _loop_thread(self) -> _LoopThread:
        if self._lt is None or self._lt.closed:
            raise RuntimeError("use the GrpcTransport inside 'async with GrpcTransport() as t:'")
        return self._lt

    async def __aenter__(self) -> Self:
        if self._lt is not None:
            raise RuntimeError("a GrpcTransport can only be entered once")
        self._lt = _LoopThread(trio.lowlevel.current_trio_token())
        self._lt.start()
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        lt = self._lt
        if lt is None or lt.closed:
            return
        with trio.CancelScope(shield=True):
            for server in list(self._servers):
                await server._shutdown(0.0)
            for channel in list(self._channels):
                await channel.aclose()
            await lt.stop()

    @asynccontextmanager
    async def serve(
        self, address: str, handlers: Iterable[Handler], *, grace: float = 0.0,
        tls: ServerTLS | None = None,
    ) -> AsyncIterator[GrpcServer]:
        grace = _check_grace(grace)
        table = _check_handlers(handlers)
        host, port = _split_host_port(address)
        targets = await _listen_targets(address, host, port)
        server = GrpcServer(self, table)
        lt = server._lt
        port = await lt.run(server._aio_bind(address, targets, port, self._server_options,
                                                   tls))
        server._port = port
        server._address = f"{host}:{port}"
        self._servers.add(server)
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                server._nursery = nursery
                try:
                    await lt.run(server._aio_start())
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
        finally:
            self._servers.discard(server)

    @asynccontextmanager
    async def connect(
        self, address: str, *, tls: ClientTLS | None = None
    ) -> AsyncIterator[GrpcChannel]:
        _split_host_port(address)
        lt = self._loop_thread()
        aio = await lt.run(_aio_make_channel(address, self._channel_options, tls))
        channel = GrpcChannel(lt, aio, address)
        self._channels.add(channel)
        try:
            yield channel
        finally:
            with trio.CancelScope(shield=True):
                await channel.aclose()
            self._channels.discard(channel)


# ---- where a server listens -----------------------------------------------------------------


def _join_host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _naming(address: str, where: str) -> str:
    return address if address == where else f"{address} at {where}"


async def _listen_targets(address: str, host: str, port: int) -> list[tuple[int, str]]:
    """Every (family, ip) that ``host`` resolves to, IPv4 first, without repeats. Raises
    ListenError (one line) if it resolves to nothing."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = await trio.socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ListenError(f"cannot listen on {address}: cannot resolve {bare!r}: "
                          f"{reason.lower()}") from None
    targets: list[tuple[int, str]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        target = (int(family), str(sockaddr[0]))
        if target not in targets:
            targets.append(target)
    if not targets:
        raise ListenError(f"cannot listen on {address}: {bare!r} resolves to no IP address")
    targets.sort(key=lambda t: t[0] != socket.AF_INET)  # stable: IPv4 first, then IPv6
    return targets


def _probe_bind(address: str, where: str, family: int, ip: str, port: int) -> None:
    """Bind (ip, port) with a plain socket as gRPC would (SO_REUSEADDR), and let it go; raise
    AddressInUseError or ListenError naming the reason if the kernel refuses."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((ip, port))
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        error = AddressInUseError if exc.errno == errno.EADDRINUSE else ListenError
        raise error(f"cannot listen on {_naming(address, where)}: {reason}") from None

"""Reusable conformance checks for peerkit transports (in the spirit of trio's
``trio.testing.check_half_closeable_stream``).

One job: check that a ``Transport`` obeys the stream contract written in
``peerkit.impl.transport.base`` (what each method returns or raises after each kind of ending).
Every check is a plain ``async def check_...(target)`` that starts its own server, so the same
checks run against the in-memory network (under virtual time) and against real gRPC (real clock).
May import: the standard library, trio (including trio.testing) and
``peerkit.impl.transport.base``. It must not import pytest or any transport implementation.

Where gRPC leaves a choice, the checks accept every outcome the contract allows (for example a
Python gRPC server may see a client cancel as EndOfStream first; a client send racing a finished
server may succeed or raise EndOfStream).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import trio
import trio.testing

from peerkit.impl.transport.base import (
    AbortStream,
    AddressInUseError,
    BidiStream,
    ClosedForSending,
    EndOfStream,
    Outcome,
    StatusCode,
    StreamCancelled,
    StreamFailed,
    StreamMethod,
    Transport,
    UnaryMethod,
    identity,
)

__all__ = ["ALL_CHECKS", "ConformanceError", "TransportTarget", "run_all"]

E = TypeVar("E", bound=BaseException)

SERVICE: Final = "/peerkit.conformance.Transport"
ECHO: Final = f"{SERVICE}/Echo"
WORK: Final = f"{SERVICE}/Work"
OTHER: Final = f"{SERVICE}/Other"
UNARY: Final = f"{SERVICE}/Unary"
UNARY_FAIL: Final = f"{SERVICE}/UnaryFail"
UNARY_SLOW: Final = f"{SERVICE}/UnarySlow"
MISSING: Final = f"{SERVICE}/Missing"

ServerStream = BidiStream[bytes, bytes]
ClientStream = BidiStream[bytes, bytes]


@dataclass(frozen=True)
class TransportTarget:
    """What a check needs: the transport, an address to listen on (port 0 is fine), an address
    nobody listens on, and a timeout (seconds) for the whole check."""

    transport: Transport
    listen_address: str
    dead_address: str
    timeout: float = 20.0


class ConformanceError(AssertionError):
    """A transport broke the contract."""


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise ConformanceError(what)


async def _raises(exc_type: type[E], fn: Callable[[], Awaitable[object]], what: str) -> E:
    try:
        result = await fn()
    except exc_type as exc:
        return exc
    except BaseException as exc:
        raise ConformanceError(
            f"{what}: expected {exc_type.__name__}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise ConformanceError(f"{what}: expected {exc_type.__name__}, got result {result!r}")


def _stream(
    name: str, handler: Callable[[ServerStream], Awaitable[None]]
) -> StreamMethod[Any, Any]:
    return StreamMethod(name, handler, identity, identity)


async def _echo(stream: ServerStream) -> None:
    async for message in stream:
        await stream.send(b"echo:" + message)


def _open(channel: Any, method: str = ECHO) -> ClientStream:
    stream: ClientStream = channel.open_stream(method, identity, identity)
    return stream


class _Box:
    """Collects a handler's server stream and observations for the test side."""

    def __init__(self) -> None:
        self.stream: ServerStream | None = None
        self.seen: list[object] = []
        self.ready = trio.Event()
        self.done = trio.Event()

    def server_stream(self) -> ServerStream:
        _expect(self.stream is not None, "the server handler never ran")
        assert self.stream is not None
        return self.stream


# ---------------------------------------------------------------------------------------------
# Checks


async def check_echo(target: TransportTarget) -> None:
    """Ping-pong and pipelined echo, then half-close: client sees EndOfStream, both ends OK."""
    box = _Box()

    async def handler(stream: ServerStream) -> None:
        box.stream = stream
        _expect(stream.side == "server" and stream.method == ECHO, "server stream identity")
        await _echo(stream)

    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, [_stream(ECHO, handler)]) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream = _open(channel)
            _expect(stream.side == "client" and stream.method == ECHO, "client stream identity")
            _expect(stream.outcome is None, "a fresh stream has no outcome")
            for i in range(5):
                await stream.send(b"%d" % i)
                got = await stream.receive()
                _expect(got == b"echo:%d" % i, f"ping-pong {i}: got {got!r}")
            for i in range(20):
                await stream.send(b"p%d" % i)
            for i in range(20):
                got = await stream.receive()
                _expect(got == b"echo:p%d" % i, f"pipelined {i}: got {got!r}")
            await stream.close_send()
            await _raises(EndOfStream, stream.receive, "receive after the server returned")
            outcome = await stream.wait_finished()
            _expect(outcome.ok, f"client outcome {outcome}")
            server_outcome = await box.server_stream().wait_finished()
            _expect(server_outcome.ok, f"server outcome {server_outcome}")


async def check_half_close_then_server_sends(target: TransportTarget) -> None:
    """After the client's half-close the server still sends, then returns; EndOfStream is
    repeatable on both ends."""
    box = _Box()

    async def handler(stream: ServerStream) -> None:
        box.stream = stream
        received = [message async for message in stream]
        for _ in range(3):
            await _raises(EndOfStream, stream.receive, "server receive after EndOfStream")
        _expect(stream.outcome is None, "a half-close must not end the RPC at the server")
        for message in received:
            await stream.send(message)
        await stream.send(b"late-1")
        await stream.send(b"late-2")

    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, [_stream(WORK, handler)]) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream = _open(channel, WORK)
            for message in (b"a", b"b", b"c"):
                await stream.send(message)
            await stream.close_send()
            got = [await stream.receive() for _ in range(5)]
            _expect(got == [b"a", b"b", b"c", b"late-1", b"late-2"], f"client got {got!r}")
            for _ in range(3):
                await _raises(EndOfStream, stream.receive, "client receive after EndOfStream")
            _expect(stream.outcome == Outcome(StatusCode.OK), f"client outcome {stream.outcome}")
            await _raises(ClosedForSending, lambda: stream.send(b"x"), "send after close_send")


async def check_close_send_rules(target: TransportTarget) -> None:
    """close_send is idempotent; send after it raises ClosedForSending on both ends; a server's
    close_send does not end the RPC, its return does."""
    box = _Box()

    async def handler(stream: ServerStream) -> None:
        box.stream = stream
        await stream.close_send()
        await stream.close_send()
        await _raises(ClosedForSending, lambda: stream.send(b"x"), "server send after close_send")
        got = await stream.receive()
        box.seen.append(got)
        await _raises(EndOfStream, stream.receive, "server receive after the client half-closed")
        await _raises(ClosedForSending, lambda: stream.send(b"x"), "server send, again")

    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, [_stream(WORK, handler)]) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream = _open(channel, WORK)
            await stream.send(b"hello")
            await stream.close_send()
            await stream.close_send()
            await _raises(ClosedForSending, lambda: stream.send(b"x"), "client send after close")
            await _raises(EndOfStream, stream.receive, "client receive after the handler returned")
            _expect(box.seen == [b"hello"], f"server received {box.seen!r}")
            outcome = await stream.wait_finished()
            _expect(outcome.ok, f"client outcome {outcome}")
            await stream.close_send()  # still a no-op once the RPC is over


async def check_server_abort(target: TransportTarget) -> None:
    """AbortStream(code, message) reaches the client as StreamFailed(code, message) after the
    messages sent before it; CANCELLED becomes StreamCancelled; an escaping StreamFailed ends the
    RPC with its status without crashing the server; a server-side cancel() is a CANCELLED end."""
    servers: list[ServerStream] = []

    async def abort(stream: ServerStream) -> None:
        servers.append(stream)
        await stream.send(b"m1")
        raise AbortStream(StatusCode.FAILED_PRECONDITION, "precondition failed: test")

    async def abort_cancelled(stream: ServerStream) -> None:
        raise AbortStream(StatusCode.CANCELLED, "server gave up")

    async def escape(stream: ServerStream) -> None:
        raise StreamFailed(StatusCode.NOT_FOUND, "escaped")

    async def self_cancel(stream: ServerStream) -> None:
        servers.append(stream)
        await stream.send(b"before-cancel")
        stream.cancel()
        stream.cancel()
        _expect(
            stream.outcome is not None and stream.outcome.cancelled,
            f"server outcome after its own cancel(): {stream.outcome}",
        )
        await _raises(StreamCancelled, lambda: stream.send(b"x"), "server send after cancel()")

    handlers = [
        _stream(f"{SERVICE}/Abort", abort),
        _stream(f"{SERVICE}/AbortCancelled", abort_cancelled),
        _stream(f"{SERVICE}/Escape", escape),
        _stream(f"{SERVICE}/SelfCancel", self_cancel),
    ]
    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, handlers) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream = _open(channel, f"{SERVICE}/Abort")
            got = await stream.receive()
            _expect(got == b"m1", f"message before the abort: {got!r}")
            for attempt in range(3):
                exc = await _raises(StreamFailed, stream.receive, f"receive #{attempt} after abort")
                _expect(not isinstance(exc, StreamCancelled), "an abort is not a cancel")
                _expect(exc.code is StatusCode.FAILED_PRECONDITION, f"code {exc.code}")
                _expect(exc.message == "precondition failed: test", f"message {exc.message!r}")
            exc = await _raises(StreamFailed, lambda: stream.send(b"x"), "send after abort")
            _expect(exc.code is StatusCode.FAILED_PRECONDITION, f"send error code {exc.code}")
            await stream.close_send()
            expected = Outcome(StatusCode.FAILED_PRECONDITION, "precondition failed: test")
            _expect(stream.outcome == expected, f"client outcome {stream.outcome}")
            server_outcome = await servers[0].wait_finished()
            _expect(server_outcome == expected, f"server outcome {server_outcome}")

            stream = _open(channel, f"{SERVICE}/AbortCancelled")
            cancelled = await _raises(StreamCancelled, stream.receive, "abort with CANCELLED")
            _expect(cancelled.message == "server gave up", f"message {cancelled.message!r}")

            stream = _open(channel, f"{SERVICE}/Escape")
            exc = await _raises(StreamFailed, stream.receive, "escaping StreamFailed")
            _expect(
                exc.code is StatusCode.NOT_FOUND and exc.message == "escaped",
                f"escaping StreamFailed became {exc.code}: {exc.message!r}",
            )

            stream = _open(channel, f"{SERVICE}/SelfCancel")
            got = await stream.receive()
            _expect(got == b"before-cancel", f"message before the server's cancel: {got!r}")
            await _raises(StreamCancelled, stream.receive, "after the server cancelled")
            _expect(
                stream.outcome is not None and stream.outcome.cancelled,
                f"client outcome {stream.outcome}",
            )


async def check_client_cancel(target: TransportTarget) -> None:
    """A client cancel: the client's own operations raise StreamCancelled at once; the server sees
    EndOfStream or StreamCancelled, and its outcome finally becomes CANCELLED."""
    box = _Box()

    async def handler(stream: ServerStream) -> None:
        box.stream = stream
        box.seen.append(await stream.receive())
        box.ready.set()
        try:
            extra = await stream.receive()
            box.seen.append(("message", extra))
        except EndOfStream:
            box.seen.append("eof")
        except StreamCancelled:
            box.seen.append("cancelled")
        box.seen.append(await stream.wait_finished())
        try:
            await stream.receive()
        except BaseException as exc:
            box.seen.append(type(exc))
        try:
            await stream.send(b"too late")
        except BaseException as exc:
            box.seen.append(type(exc))
        box.done.set()

    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, [_stream(WORK, handler)]) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream = _open(channel, WORK)
            await stream.send(b"first")
            await box.ready.wait()
            stream.cancel()
            _expect(
                stream.outcome is not None and stream.outcome.cancelled,
                f"client outcome right after cancel(): {stream.outcome}",
            )
            await _raises(StreamCancelled, stream.receive, "client receive after its cancel")
            await _raises(StreamCancelled, lambda: stream.send(b"x"), "client send after cancel")
            await stream.close_send()
            await stream.aclose()
            await box.done.wait()
            seen = box.seen
            _expect(seen[0] == b"first", f"server first message {seen[0]!r}")
            _expect(seen[1] in ("eof", "cancelled"), f"server saw {seen[1]!r} for the cancel")
            final = seen[2]
            _expect(
                isinstance(final, Outcome) and final.cancelled,
                f"server's final outcome after a client cancel: {final}",
            )
            _expect(seen[3] is StreamCancelled, f"server receive after the cancel: {seen[3]}")
            _expect(seen[4] is StreamCancelled, f"server send after the cancel: {seen[4]}")


async def check_server_returns_while_client_sending(target: TransportTarget) -> None:
    """The server returns while the client keeps sending: each send succeeds (discarded) or raises
    EndOfStream, never anything else, and once EndOfStream always EndOfStream; the client then
    receives what the server sent, then EndOfStream, outcome OK."""
    returned = trio.Event()

    async def handler(stream: ServerStream) -> None:
        await stream.receive()
        await stream.send(b"bye")
        returned.set()

    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, [_stream(WORK, handler)]) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream = _open(channel, WORK)
            await stream.send(b"first")
            await returned.wait()
            results = []
            for i in range(20):
                try:
                    await stream.send(b"more %d" % i)
                    results.append("ok")
                except EndOfStream:
                    results.append("eos")
            first_eos = results.index("eos") if "eos" in results else len(results)
            _expect(
                all(r == "eos" for r in results[first_eos:]),
                f"send results not monotonic: {results}",
            )
            got = await stream.receive()
            _expect(got == b"bye", f"message sent before the server returned: {got!r}")
            await _raises(EndOfStream, stream.receive, "receive after the server returned")
            _expect(stream.outcome == Outcome(StatusCode.OK), f"client outcome {stream.outcome}")
            await _raises(EndOfStream, lambda: stream.send(b"x"), "send once the RPC ended OK")


async def check_unary(target: TransportTarget) -> None:
    """Unary OK, AbortStream error, unknown method, deadline, and caller cancellation (which
    cancels the handler)."""
    slow_started = trio.Event()
    slow_cancelled = trio.Event()

    async def reverse(request: bytes) -> bytes:
        return request[::-1]

    async def fail(request: bytes) -> bytes:
        raise AbortStream(StatusCode.NOT_FOUND, f"no such thing: {request.decode()}")

    async def slow(request: bytes) -> bytes:
        if request == b"watch":
            slow_started.set()
        try:
            await trio.sleep_forever()
        finally:
            if request == b"watch":
                slow_cancelled.set()
        raise AssertionError("unreachable")

    handlers = [
        UnaryMethod(UNARY, reverse, identity, identity),
        UnaryMethod(UNARY_FAIL, fail, identity, identity),
        UnaryMethod(UNARY_SLOW, slow, identity, identity),
    ]
    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, handlers) as server,
            target.transport.connect(server.address) as channel,
        ):
            got = await channel.unary(UNARY, b"abc", identity, identity)
            _expect(got == b"cba", f"unary result {got!r}")
            text = await channel.unary(UNARY, "xyz", str.encode, bytes.decode)
            _expect(text == "zyx", f"typed unary result {text!r}")
            exc = await _raises(
                StreamFailed,
                lambda: channel.unary(UNARY_FAIL, b"q", identity, identity),
                "unary abort",
            )
            _expect(exc.code is StatusCode.NOT_FOUND, f"unary abort code {exc.code}")
            _expect(exc.message == "no such thing: q", f"unary abort message {exc.message!r}")
            exc = await _raises(
                StreamFailed,
                lambda: channel.unary(MISSING, b"", identity, identity),
                "unknown unary method",
            )
            _expect(exc.code is StatusCode.UNIMPLEMENTED, f"unknown method code {exc.code}")
            exc = await _raises(
                StreamFailed,
                lambda: channel.unary(UNARY_SLOW, b"", identity, identity, timeout=0.2),
                "unary past its deadline",
            )
            _expect(exc.code is StatusCode.DEADLINE_EXCEEDED, f"deadline code {exc.code}")
            async with trio.open_nursery() as nursery:

                async def call_slow() -> None:
                    await channel.unary(UNARY_SLOW, b"watch", identity, identity)
                    raise ConformanceError("a cancelled unary call returned")

                nursery.start_soon(call_slow)
                await slow_started.wait()
                nursery.cancel_scope.cancel()
            await slow_cancelled.wait()


async def check_dead_address(target: TransportTarget) -> None:
    """Connecting succeeds lazily; calls to an address nobody listens on fail UNAVAILABLE."""
    with trio.fail_after(target.timeout):
        async with target.transport.connect(target.dead_address) as channel:
            exc = await _raises(
                StreamFailed, lambda: channel.unary(UNARY, b"", identity, identity), "dead unary"
            )
            _expect(exc.code is StatusCode.UNAVAILABLE, f"dead unary code {exc.code}")
            stream = _open(channel)
            exc = await _raises(StreamFailed, stream.receive, "dead stream receive")
            _expect(exc.code is StatusCode.UNAVAILABLE, f"dead stream receive code {exc.code}")
            exc = await _raises(StreamFailed, lambda: stream.send(b"x"), "dead stream send")
            _expect(exc.code is StatusCode.UNAVAILABLE, f"dead stream send code {exc.code}")
            _expect(
                stream.outcome is not None and stream.outcome.code is StatusCode.UNAVAILABLE,
                f"dead stream outcome {stream.outcome}",
            )
            stream = _open(channel)
            exc = await _raises(StreamFailed, lambda: stream.send(b"x"), "dead stream, send first")
            _expect(exc.code is StatusCode.UNAVAILABLE, f"dead stream send-first code {exc.code}")


async def check_local_cancel(target: TransportTarget) -> None:
    """cancel() and aclose() are idempotent; `async with stream` cancels on exit; cancel() after
    the RPC ended OK changes nothing."""
    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, [_stream(ECHO, _echo)]) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream = _open(channel)
            await stream.send(b"x")
            stream.cancel()
            stream.cancel()
            outcome = await stream.wait_finished()
            _expect(outcome.cancelled, f"outcome after cancel(): {outcome}")
            await _raises(StreamCancelled, stream.receive, "receive after cancel()")
            await _raises(StreamCancelled, lambda: stream.send(b"y"), "send after cancel()")
            await stream.aclose()
            await stream.aclose()

            async with _open(channel) as scoped:
                await scoped.send(b"in a block")
                got = await scoped.receive()
                _expect(got == b"echo:in a block", f"echo in a block: {got!r}")
            _expect(
                scoped.outcome is not None and scoped.outcome.cancelled,
                f"outcome after leaving `async with stream`: {scoped.outcome}",
            )

            finished = _open(channel)
            await finished.close_send()
            await _raises(EndOfStream, finished.receive, "receive on a finished echo")
            finished.cancel()
            await finished.aclose()
            _expect(finished.outcome == Outcome(StatusCode.OK), "cancel() after OK changed it")
            await _raises(EndOfStream, finished.receive, "receive after a no-op cancel()")


async def check_cancelled_receive_keeps_message(target: TransportTarget) -> None:
    """Cancelling a task blocked in receive() loses nothing: the next receive() gets the message."""
    go = trio.Event()

    async def handler(stream: ServerStream) -> None:
        await go.wait()
        await stream.send(b"payload")
        async for _ in stream:
            pass

    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, [_stream(WORK, handler)]) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream = _open(channel, WORK)
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def receiver() -> None:
                        await stream.receive()
                        raise ConformanceError("receive returned before anything was sent")

                    nursery.start_soon(receiver)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            _expect(stream.outcome is None, "a cancelled receive() must not end the RPC")
            go.set()
            got = await stream.receive()
            _expect(got == b"payload", f"message after a cancelled receive: {got!r}")
            await stream.close_send()
            await _raises(EndOfStream, stream.receive, "receive after the handler returned")


async def check_busy(target: TransportTarget) -> None:
    """Two tasks receiving on one end at once: the second gets trio.BusyResourceError."""
    go = trio.Event()

    async def handler(stream: ServerStream) -> None:
        await go.wait()
        await stream.send(b"one")
        async for _ in stream:
            pass

    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, [_stream(WORK, handler)]) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream = _open(channel, WORK)
            received: list[bytes] = []
            async with trio.open_nursery() as nursery:

                async def first() -> None:
                    received.append(await stream.receive())

                nursery.start_soon(first)
                await trio.testing.wait_all_tasks_blocked()
                await _raises(trio.BusyResourceError, stream.receive, "a concurrent receive")
                go.set()
            _expect(received == [b"one"], f"first receiver got {received!r}")
            await stream.close_send()
            await _raises(EndOfStream, stream.receive, "receive at the end")


async def check_address_in_use(target: TransportTarget) -> None:
    """Listening on an address that is already listened on raises AddressInUseError."""
    with trio.fail_after(target.timeout):
        async with target.transport.serve(target.listen_address, [_stream(ECHO, _echo)]) as server:
            try:
                async with target.transport.serve(server.address, [_stream(ECHO, _echo)]):
                    raise ConformanceError(f"a second server listens on {server.address}")
            except AddressInUseError:
                pass
            async with target.transport.connect(server.address) as channel:
                stream = _open(channel)
                await stream.send(b"still")
                got = await stream.receive()
                _expect(got == b"echo:still", f"first server after the failed bind: {got!r}")
                await stream.close_send()


async def check_serializers(target: TransportTarget) -> None:
    """Messages go through the given (de)serializers on both ends; a serializer that does not
    return bytes makes send() raise TypeError."""

    async def upper(stream: BidiStream[str, str]) -> None:
        async for text in stream:
            _expect(isinstance(text, str), f"server got {type(text).__name__}, not str")
            await stream.send(text.upper())

    entry: StreamMethod[str, str] = StreamMethod(ECHO, upper, bytes.decode, str.encode)
    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, [entry]) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream: BidiStream[str, str] = channel.open_stream(ECHO, str.encode, bytes.decode)
            await stream.send("héllo")
            got = await stream.receive()
            _expect(got == "HÉLLO", f"typed echo: {got!r}")
            bad: BidiStream[str, str] = channel.open_stream(ECHO, lambda s: s, bytes.decode)  # type: ignore[arg-type,return-value]
            await _raises(TypeError, lambda: bad.send("not bytes"), "serializer returning str")
            bad.cancel()
            await stream.close_send()
            await _raises(EndOfStream, stream.receive, "typed stream end")


class _HandlerBug(Exception):
    pass


async def check_handler_crash(target: TransportTarget) -> None:
    """A handler raising an unexpected exception ends its RPC (UNKNOWN, or UNAVAILABLE if the
    crashing server's shutdown wins the race) and crashes serve() with that exception."""
    crashes: list[BaseExceptionGroup[BaseException]] = []

    async def buggy(stream: ServerStream) -> None:
        await stream.receive()
        raise _HandlerBug("boom")

    async def run_server(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with target.transport.serve(
                target.listen_address, [_stream(WORK, buggy)]
            ) as server:
                task_status.started(server.address)
                await trio.sleep_forever()
        except BaseExceptionGroup as group:
            crashes.append(group)

    with trio.fail_after(target.timeout):
        async with trio.open_nursery() as nursery:
            address: str = await nursery.start(run_server)
            async with target.transport.connect(address) as channel:
                stream = _open(channel, WORK)
                await stream.send(b"trigger")
                exc = await _raises(StreamFailed, stream.receive, "RPC of a crashing handler")
                _expect(
                    exc.code in (StatusCode.UNKNOWN, StatusCode.UNAVAILABLE),
                    f"crashing handler's RPC ended with {exc.code}",
                )
        _expect(len(crashes) == 1, "serve() did not exit with the handler's exception")
        _expect(crashes[0].subgroup(_HandlerBug) is not None, f"serve() raised {crashes[0]!r}")


async def check_server_shutdown(target: TransportTarget) -> None:
    """Leaving serve() with a live stream: the client sees StreamFailed(UNAVAILABLE); the server
    end's outcome is CANCELLED."""
    box = _Box()
    stop = trio.Event()

    async def handler(stream: ServerStream) -> None:
        box.stream = stream
        await stream.receive()
        box.ready.set()
        with contextlib.suppress(EndOfStream, StreamCancelled):
            await stream.receive()
        await stream.wait_finished()

    async def run_server(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with target.transport.serve(
            target.listen_address, [_stream(WORK, handler)]
        ) as server:
            task_status.started(server.address)
            await stop.wait()

    with trio.fail_after(target.timeout):
        async with trio.open_nursery() as nursery:
            address: str = await nursery.start(run_server)
            async with target.transport.connect(address) as channel:
                stream = _open(channel, WORK)
                await stream.send(b"hello")
                await box.ready.wait()
                stop.set()
                exc = await _raises(StreamFailed, stream.receive, "receive during shutdown")
                _expect(exc.code is StatusCode.UNAVAILABLE, f"shutdown seen by client: {exc.code}")
        server_outcome = box.server_stream().outcome
        _expect(
            server_outcome is not None and server_outcome.cancelled,
            f"server outcome after shutdown: {server_outcome}",
        )


async def check_channel_close(target: TransportTarget) -> None:
    """Closing a channel cancels its open streams (client: StreamCancelled; server: finally
    CANCELLED); open_stream on a closed channel raises trio.ClosedResourceError."""
    box = _Box()

    async def handler(stream: ServerStream) -> None:
        box.stream = stream
        await stream.receive()
        box.ready.set()
        box.seen.append(await stream.wait_finished())
        box.done.set()

    with trio.fail_after(target.timeout):
        async with target.transport.serve(
            target.listen_address, [_stream(WORK, handler)]
        ) as server:
            async with target.transport.connect(server.address) as channel:
                stream = _open(channel, WORK)
                await stream.send(b"x")
                await box.ready.wait()
            await _raises(StreamCancelled, stream.receive, "receive after the channel closed")
            try:
                _open(channel, WORK)
                raise ConformanceError("open_stream on a closed channel succeeded")
            except trio.ClosedResourceError:
                pass
            await box.done.wait()
            final = box.seen[0]
            _expect(isinstance(final, Outcome) and final.cancelled, f"server outcome {final}")


def _strict(data: bytes) -> bytes:
    """A deserializer that refuses b"bad" (as a protobuf one refuses bytes that do not parse)."""
    if data == b"bad":
        raise ValueError("not a message")
    return data


def _strict_reply(data: bytes) -> bytes:
    """The client's deserializer: refuses a reply to b"BAD" ("echo:BAD", "ok:BAD")."""
    return _strict(data.partition(b":")[2].lower())


async def check_undecodable_messages(target: TransportTarget) -> None:
    """A message that does not decode never crashes the server: a stream request ends that RPC
    with INVALID_ARGUMENT (the handler's receive raises StreamFailed(INVALID_ARGUMENT)); a unary
    request is INVALID_ARGUMENT without running the handler; a response that does not decode is
    StreamFailed(INTERNAL) at the client. The server serves on afterwards."""
    box = _Box()
    unary_runs: list[bytes] = []

    async def handler(stream: ServerStream) -> None:
        box.stream = stream
        try:
            async for message in stream:
                await stream.send(b"echo:" + message)
        except StreamFailed as exc:
            box.seen.append(exc.code)
            raise

    async def unary(request: bytes) -> bytes:
        unary_runs.append(request)
        return b"ok:" + request

    entries: list[Any] = [StreamMethod(ECHO, handler, _strict, identity),
                          UnaryMethod(UNARY, unary, _strict, identity)]
    with trio.fail_after(target.timeout):
        async with (
            target.transport.serve(target.listen_address, entries) as server,
            target.transport.connect(server.address) as channel,
        ):
            stream = _open(channel)
            await stream.send(b"good")
            _expect(await stream.receive() == b"echo:good", "echo before the bad message")
            await stream.send(b"bad")
            exc = await _raises(StreamFailed, stream.receive, "after an undecodable request")
            _expect(exc.code is StatusCode.INVALID_ARGUMENT, f"undecodable request: {exc.code}")
            _expect(box.seen == [StatusCode.INVALID_ARGUMENT], f"handler saw {box.seen}")
            uexc = await _raises(StreamFailed, lambda: channel.unary(UNARY, b"bad", identity,
                                                                     identity),
                                 "unary with an undecodable request")
            _expect(uexc.code is StatusCode.INVALID_ARGUMENT, f"unary bad request: {uexc.code}")
            _expect(unary_runs == [], "the unary handler ran on an undecodable request")
            # client side: a response that does not decode
            picky = channel.open_stream(ECHO, identity, _strict_reply)
            await picky.send(b"BAD")  # decodes on the server; the echo does not on the client
            cexc = await _raises(StreamFailed, picky.receive, "undecodable response")
            _expect(cexc.code is StatusCode.INTERNAL, f"undecodable response: {cexc.code}")
            rexc = await _raises(StreamFailed, lambda: channel.unary(
                UNARY, b"BAD", identity, _strict_reply), "unary with an undecodable response")
            _expect(rexc.code is StatusCode.INTERNAL, f"unary bad response: {rexc.code}")
            # still serving
            _expect(await channel.unary(UNARY, b"y", identity, identity) == b"ok:y",
                    "unary after the bad messages")
            again = _open(channel)
            await again.send(b"again")
            _expect(await again.receive() == b"echo:again", "a new stream after the bad ones")
            await again.close_send()
            await _raises(EndOfStream, again.receive, "end of the new stream")


ALL_CHECKS: tuple[Callable[[TransportTarget], Awaitable[None]], ...] = (
    check_echo,
    check_half_close_then_server_sends,
    check_close_send_rules,
    check_server_abort,
    check_client_cancel,
    check_server_returns_while_client_sending,
    check_unary,
    check_dead_address,
    check_local_cancel,
    check_cancelled_receive_keeps_message,
    check_busy,
    check_address_in_use,
    check_serializers,
    check_handler_crash,
    check_server_shutdown,
    check_channel_close,
    check_undecodable_messages,
)


async def run_all(target: TransportTarget) -> None:
    """Run every check in order (each starts and stops its own server)."""
    for check in ALL_CHECKS:
        await check(target)

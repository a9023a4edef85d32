"""The stream tracker: one leader's in-memory record of the peer streams it runs, per peering ID.

One job: keep, for every local peering ID that has (had) a stream on this leader, whether it is
connected, when and why it disconnected, the ACK/NACK/receive/send/heartbeat statistics, and the
stream's ``doneCh`` (a ``trio.Event``) that the sync routine sets to ask the stream's handler to
send ``Terminated`` and stop (peering-protocol.md §4.5, §5.6).

Rules (upstream's June–July 2022 tracker):

* ``connected(id)``: no entry → a new connected entry with a fresh done event; an entry that is
  connected → ``DuplicateStreamError`` (vocabulary ``ERR_ACTIVE_STREAM``); a disconnected entry
  is reused: connected again, DisconnectTime and DisconnectErrorMessage cleared, and the SAME
  done event is returned.
* ``disconnected(id, error)``: Connected=false, DisconnectTime=now; a missing entry is a no-op
  (after ``delete_status`` the handler's final "disconnected" does nothing).
* ``forget_disconnected(keep)``: entries are not kept for ever: the sync routine forgets the
  disconnected entries of peerings whose row is gone (else every deleted peering would leave an
  entry, with no peer name, for the rest of the term).
* ``stream_status(id)`` returns an immutable copy, or None.
* ``connected_streams()`` lists connected entries only, with their done events.
* ``wait_for_change()`` wakes observers (tests, status pages) when an entry is added,
  (dis)connected or deleted; statistics updates do not wake it.

Times are ``trio.current_time()`` (so virtual under a MockClock). The tracker is lost with the
leadership that owns it. May import: the standard library, trio and ``peerkit.model.vocabulary``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

import trio

from peerkit.model.vocabulary import ERR_ACTIVE_STREAM

__all__ = ["DuplicateStreamError", "StreamStatus", "StreamTracker"]


class DuplicateStreamError(Exception):
    """``connected(id)`` for an id whose stream is already connected."""

    def __init__(self, peering_id: str) -> None:
        self.message = ERR_ACTIVE_STREAM.format(id=peering_id)
        super().__init__(self.message)
        self.peering_id = peering_id


@dataclass(frozen=True)
class StreamStatus:
    """A copy of one tracker entry. Times are trio clock readings; None means "never"."""

    connected: bool = True
    disconnect_time: float | None = None
    disconnect_error_message: str = ""
    last_ack: float | None = None
    last_nack: float | None = None
    last_nack_message: str = ""
    last_send_error: float | None = None
    last_send_error_message: str = ""
    last_receive_success: float | None = None
    last_receive_error: float | None = None
    last_receive_error_message: str = ""
    last_heartbeat: float | None = None


class _Entry:
    """One entry. Statistics updates (one or two per replicated message) are recorded in
    ``_changes`` and folded into the frozen ``StreamStatus`` only when it is read: a
    ``dataclasses.replace`` per message was 4% of the trio thread's time in SQLite replication
    (py-spy, issue 10). Readers see exactly what the updates in order would have built."""

    __slots__ = ("_changes", "_status", "done")

    def __init__(self) -> None:
        self._status = StreamStatus()
        self._changes: dict[str, object] = {}
        self.done = trio.Event()

    @property
    def status(self) -> StreamStatus:
        if self._changes:
            self._status = replace(self._status, **self._changes)  # type: ignore[arg-type]
            self._changes = {}
        return self._status

    @status.setter
    def status(self, status: StreamStatus) -> None:
        self._status = status
        self._changes = {}

    def update(self, changes: dict[str, object]) -> None:
        self._changes.update(changes)


class StreamTracker:
    """The tracker of one leadership term. ``clock`` defaults to ``trio.current_time``."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock: Callable[[], float] = clock or trio.current_time
        self._entries: dict[str, _Entry] = {}
        self._changed = trio.Event()
        self.version = 0  # incremented by every change that wakes ``wait_for_change``

    def _notify(self) -> None:
        self.version += 1
        event, self._changed = self._changed, trio.Event()
        event.set()

    async def wait_for_change(self, after: int) -> int:
        """Wait until ``version`` exceeds ``after`` (an entry was added, connected, disconnected
        or deleted since the caller read ``version``); return the new version."""
        while self.version <= after:
            await self._changed.wait()
        return self.version

    # ---- lifecycle of an entry -------------------------------------------------------------

    def connected(self, peering_id: str) -> trio.Event:
        """Register a stream as connected; return its done event (see the module rules)."""
        _check_id(peering_id)
        entry = self._entries.get(peering_id)
        if entry is None:
            entry = _Entry()
            self._entries[peering_id] = entry
            self._notify()
            return entry.done
        if entry.status.connected:
            raise DuplicateStreamError(peering_id)
        entry.status = replace(
            entry.status, connected=True, disconnect_time=None, disconnect_error_message=""
        )
        self._notify()
        return entry.done

    def disconnected(self, peering_id: str, error: str | None = None) -> None:
        """Mark the stream disconnected now, with the error that ended it (None: a clean end)."""
        _check_id(peering_id)
        entry = self._entries.get(peering_id)
        if entry is None:
            return
        entry.status = replace(
            entry.status,
            connected=False,
            disconnect_time=self._clock(),
            disconnect_error_message=error or "",
        )
        self._notify()

    def delete_status(self, peering_id: str) -> None:
        """Forget the entry (after sending Terminated); a missing entry is a no-op."""
        _check_id(peering_id)
        if self._entries.pop(peering_id, None) is not None:
            self._notify()

    def forget_disconnected(self, keep: Collection[str]) -> list[str]:
        """Forget every disconnected entry whose peering id is not in ``keep`` (the ids of the
        peerings that still have a row); return the ids forgotten, sorted. Connected entries
        stay whatever ``keep`` says: their handler is running and will end them itself."""
        if isinstance(keep, str) or not isinstance(keep, Collection):
            raise TypeError(f"keep must be a collection of peering ids, not {type(keep).__name__}")
        gone = sorted(pid for pid, e in self._entries.items()
                      if not e.status.connected and pid not in keep)
        for pid in gone:
            del self._entries[pid]
        if gone:
            self._notify()
        return gone

    def close_done(self, peering_id: str) -> None:
        """Close (set) that stream's done event; idempotent; a missing entry is a no-op."""
        _check_id(peering_id)
        entry = self._entries.get(peering_id)
        if entry is not None:
            entry.done.set()

    # ---- reads -----------------------------------------------------------------------------

    def stream_status(self, peering_id: str) -> StreamStatus | None:
        """A copy of the entry's status, or None when there is no entry."""
        _check_id(peering_id)
        entry = self._entries.get(peering_id)
        return None if entry is None else entry.status

    def connected_streams(self) -> dict[str, trio.Event]:
        """``{peering id: done event}`` for every connected entry."""
        return {pid: e.done for pid, e in sorted(self._entries.items()) if e.status.connected}

    def all_statuses(self) -> dict[str, StreamStatus]:
        """Every entry's status, connected or not, keyed by peering id (sorted)."""
        return {pid: e.status for pid, e in sorted(self._entries.items())}

    # ---- statistics (no-ops for a missing entry) ----------------------------------------------

    def _update(self, peering_id: str, **changes: object) -> None:
        entry = self._entries.get(peering_id)
        if entry is not None:
            entry.update(changes)

    def track_ack(self, peering_id: str) -> None:
        self._update(peering_id, last_ack=self._clock())

    def track_nack(self, peering_id: str, message: str) -> None:
        self._update(peering_id, last_nack=self._clock(), last_nack_message=message)

    def track_send_error(self, peering_id: str, message: str) -> None:
        self._update(peering_id, last_send_error=self._clock(), last_send_error_message=message)

    def track_receive_success(self, peering_id: str) -> None:
        self._update(peering_id, last_receive_success=self._clock())

    def track_receive_error(self, peering_id: str, message: str) -> None:
        self._update(
            peering_id, last_receive_error=self._clock(), last_receive_error_message=message
        )

    def track_heartbeat(self, peering_id: str) -> None:
        self._update(peering_id, last_heartbeat=self._clock())


def _check_id(peering_id: object) -> None:
    if not isinstance(peering_id, str):
        raise TypeError(f"peering_id must be a str, not {type(peering_id).__name__}")
    if not peering_id:
        raise ValueError("peering_id must not be empty")

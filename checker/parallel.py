"""The search of engine.py spread over several worker processes, with the same results.

Theory of operation
-------------------
A hash-partitioned, level-synchronous breadth-first search (the design of PReach and of TLC's
distributed mode). Each worker owns the states whose fingerprint falls in its partition: it keeps
them (exactly, in a dict, as the sequential engine does) and expands the ones of the current level
(its *frontier*). A level has three parts, in two rounds; the coordinator waits for every
worker at each round:

1. ``expand``: each worker runs ``successors`` on its frontier, checks the transition invariants
   on every step, and sorts the successors it does not know into one batch per owner (one
   message each, encoded by `wire`: each part of a state once per link);
2. ``receive`` (round 1): each owner merges the batches sent to it, drops the states it already
   has, and keeps for every new state the smallest *key* (parent number, position of the step in
   the parent's ``successors``) it was reached by; it answers with its new keys, sorted;
3. ``number`` (round 2): the coordinator ranks all new keys of the level, and each owner numbers
   its new states by rank, checks the invariants on them, and answers every sender with the
   numbers of the states it sent (so the sender can record its liveness edges with their end
   points); then, in the same round, it expands them: step 1 of the next level (``seed`` does
   step 1 of the first). The senders get the numbers in their next ``receive``.

Two rounds per level is as few as keys made of the parents' numbers allow: a level's keys are
ranked only once every owner has merged every batch of the level (round 1), and only then can its
states be numbered and their successors keyed (round 2). (One round would need a key that can be
compared before the parents are numbered, such as the grandparent's number and two positions; not
done.) The coordinator tells a worker not to expand ahead a level the search will not go on with
(the depth, state or time bound, or a first transition-invariant violation stops it), and a worker
does not when one of its new states breaks an invariant and the first violation stops the search;
only another worker's expansion of that last level can be work thrown away.

What a worker knows: one dict per worker holds the number of every state it owns, the numbers
the owners answered for the states it sent them (at most as many as it owns: `remote_share`),
and, until the owners' numbers come back, a code for each state met in the last two
expansions and not known (tagged with the expansion's parity). So a successor met
again costs one lookup, as in the engine, and a successor whose owner has it already is never
sent to it again once its number is known: on `default` the states sent to another worker fall
from about 186,000 (every distinct successor of a level that another worker owns) to 101,219
(counted in one process with 2 partitions).

Why the numbering is the sequential one: sequential BFS numbers the states of a level in the order
they are first discovered, and discovery order is the order of (parent's number, position): the
parents are expanded in order of number and each one's successors in order. Ranking the minimum
keys of the level reproduces it, so every state gets the same number and the same BFS parent, and
the counterexamples (rebuilt from parents) are the same shortest ones. The first violation found is
the one with the smallest key; when the search stops there, the coordinator counts the states and
steps the sequential search would have counted up to that key, so the counts agree too.

The coordinator does not keep the states: it keeps each state's parent and position (16 bytes)
and recomputes a state, when a counterexample needs it, by re-running the steps from its initial
state (`_Replayed`). Liveness needs the whole graph: the workers keep the edges the properties
count (with action labels) and which of their states are targets, hand them over at the end, and
the coordinator decides liveness with the engine's own code (`engine._Search`, whose search and
seeding this module replaces, and whose `_target_ids` it overrides).

Owners are chosen by `fingerprint`, which is the same in every process: Python's ``hash`` of a
string is salted per process (a spawned or remote worker has another salt), and in Python 3.11 the
hash of ``None`` is its address. The fingerprint only chooses an owner; states are still compared
exactly, so two states with one fingerprint are merely kept by the same worker.

Workers are reached through a `Pool`: `ProcessPool` runs them as local processes (``peerkit check
--workers N``); the CLI adds a pool on a distributed engine (``--cluster``). Import rules: the
standard library and the checker's own modules only.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import multiprocessing
import os
import pickle
import time
import traceback
import zlib
from array import array
from collections.abc import Callable, Hashable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any, Generic, Protocol, TypeVar

from .api import LivenessLike, Model
from .engine import Bounds, ProgressCallback, Result, _Search, _Stop
from .wire import Decoder, Encoder

S = TypeVar("S", bound=Hashable)
A = TypeVar("A")

#: A key is (parent number << _POS_BITS) | position of the step among the parent's successors.
_POS_BITS = 20
_POS_MASK = (1 << _POS_BITS) - 1
_MASK64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
#: How many tuples a `Fingerprinter` remembers before it starts again (bounds its memory).
_REMEMBER = 1 << 18

#: What an expansion answers: a batch per owner (None for itself), the first key each
#: transition invariant fails at, and the steps taken.
Expanded = tuple[list[bytes | None], dict[str, int], int]


def _mix(h: int) -> int:
    """splitmix64's finaliser: every bit of `h` reaches the low bits the owner is taken from."""
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


class Fingerprinter:
    """A 64-bit fingerprint of a state that is the same in every process and on every machine.

    Defined on the values states are made of: tuples (named or not), ints, bools, strings, bytes,
    None, floats and frozensets (order-free); anything else by its ``repr``. Successors share most
    of their parts with their parent, so a tuple's fingerprint is remembered by identity (keeping
    the tuple alive, so the identity cannot be reused), up to `_REMEMBER` tuples: a successor
    costs about the parts its step changed.
    """

    def __init__(self) -> None:
        self._tuples: dict[int, tuple[object, int]] = {}
        self._strings: dict[str, int] = {}

    def __call__(self, value: object) -> int:
        kind = type(value)
        if kind is int or kind is bool:
            return value & _MASK64  # type: ignore[operator]
        if isinstance(value, tuple):
            known = self._tuples.get(id(value))
            if known is not None and known[0] is value:
                return known[1]
            h = _FNV_OFFSET ^ len(value)
            strings = self._strings
            for item in value:
                kind = type(item)
                if kind is int or kind is bool:
                    part = item & _MASK64
                elif kind is str:
                    part = strings.get(item) or self(item)
                else:
                    part = self(item)
                h = ((h ^ part) * _FNV_PRIME) & _MASK64
            if len(self._tuples) >= _REMEMBER:
                self._tuples.clear()
            self._tuples[id(value)] = (value, h)
            return h
        if isinstance(value, str):
            cached = self._strings.get(value)
            if cached is None:
                cached = self._strings[value] = zlib.crc32(value.encode()) | 1 << 40
            return cached
        if value is None:
            return 0x9E3779B97F4A7C15
        if isinstance(value, int):  # IntEnum and the like
            return int(value) & _MASK64
        if isinstance(value, bytes):
            return zlib.crc32(value) | 1 << 41
        if isinstance(value, frozenset):
            return (sum(_mix(self(item)) for item in value) ^ 0x5BD1E995) & _MASK64
        if isinstance(value, float):
            return hash(value) & _MASK64  # not salted
        return zlib.crc32(repr(value).encode()) | 1 << 42


def fingerprint(state: object) -> int:
    """The fingerprint `Fingerprinter` gives `state` (without remembering anything)."""
    return Fingerprinter()(state)


# ---------------------------------------------------------------------------------------------
# The worker


class _Expansion(Generic[S]):
    """What one expansion leaves to settle until the owners answer the numbers of its states."""

    __slots__ = ("parity", "pending", "sent")

    def __init__(self, parity: int, count: int) -> None:
        #: the low bit of this expansion's codes in `Partition.index`: an expansion is settled
        #: one round after the next one has begun, so two are told apart
        self.parity = parity
        #: the candidates by owner: the states sent to each other worker (kept to learn their
        #: numbers from the replies), and the ones kept here (a list that grows in `receive` by
        #: the new states others send)
        self.sent: list[list[S]] = [[] for _ in range(count)]
        #: liveness edges waiting for the numbers of their end points: key, what `index` said of
        #: the end point then (its number, or a candidate's code), label, mask (bit i: liveness
        #: property i counts the step)
        self.pending: list[tuple[int, int, int, int]] = []


class Partition(Generic[S, A]):
    """One worker's share of the search: the states it owns and its part of each round."""

    #: How many states of other workers a worker may remember the numbers of, per state of its
    #: own: with 1, a worker holds at most twice its share, so all of them together at most
    #: twice the states the engine holds.
    remote_share = 1.0

    def __init__(self, model_factory: Callable[[], Model[S, A]], me: int, count: int,
                 portable: bool = True) -> None:
        model = model_factory()
        #: False only where every worker has this process's string-hash salt and object
        #: addresses (forked from one parent): then Python's own hash, in C, is the fingerprint
        self.portable = portable
        self.me = me
        self.count = count
        self.successors = model.successors
        reductions = tuple(model.reductions)

        def canonical(state: S) -> S:
            for reduction in reductions:
                state = reduction.canonical(state)
            return state

        self.canonical: Callable[[S], S] | None = canonical if reductions else None
        self.invariants = [(inv.id, inv.holds) for inv in model.invariants]
        self.tinvs = [(t.id, t.holds) for t in model.transition_invariants]
        self.liveness: Sequence[LivenessLike[S, A]] = tuple(model.liveness)
        self.fp = Fingerprinter()
        #: What this worker knows of a state, by the state. A number (>= 0): the state's, for
        #: every state it owns, and for states of other workers it sent them and learned the
        #: numbers of (while it holds no more of theirs than of its own). Below 0, until its
        #: expansion is settled: ``-1 - ((owner + count * slot) << 1 | parity)``, a state met in
        #: an expansion of that parity and sent to `owner` (or kept, if this worker owns it) as
        #: its `slot`-th candidate. One dict, so a successor met again costs one lookup, as in
        #: the engine, and a successor that is known, or on its way to its owner, is never sent
        #: to it again.
        self.index: dict[S, int] = {}
        self.owned = 0  # how many of `index`'s numbers are of states this worker owns
        self.remote = 0  # how many are of states other workers own
        self.frontier: list[tuple[int, S]] = []
        # the last expansion's parents and their successor counts, and the ones of the expansion
        # whose new states were numbered last (for `transitions_before`)
        self.expanded = array("q")
        self.fanout = array("q")
        self.numbered_from = (self.expanded, self.fanout)
        self.made = 0  # expansions made
        # the expansions not settled yet, oldest first: the last one and, until its replies
        # come in the next `receive`, the one before
        self.unsettled: list[_Expansion[S]] = []
        # the numbers of each parity's candidates, by owner (the replies, and this worker's own)
        self.numbers: list[list[Sequence[int]]] = [[() for _ in range(count)] for _ in range(2)]
        self.keys: list[int] = []  # the least key of each of this level's own candidates
        # per other sender, what each state it sent here is: its number (>= 0) or ~slot
        self.refs: list[array[int] | None] = []
        self.order: list[int] = []  # this level's slots in order of key
        # the links to and from every other worker (`wire`)
        self.encoders = [Encoder() for _ in range(count)]
        self.decoders = [Decoder() for _ in range(count)]
        # each liveness property's edges, in the order they were taken: sources, ends, labels
        self.edges = [(array("q"), array("q"), array("i")) for _ in self.liveness]
        self.action_ids: dict[A, int] = {}
        self.targets = [array("q") for _ in self.liveness]

    def owner(self, state: S) -> int:
        if self.count == 1:
            return 0
        if not self.portable:
            return _mix(hash(state) & _MASK64) % self.count
        return _mix(self.fp(state)) % self.count

    def seed(self, initial: list[tuple[int, S]], expand: bool) -> tuple[int, Expanded | None]:
        """Take the initial states this worker owns; expand them at once if `expand`."""
        for sid, state in initial:
            if self.owner(state) == self.me:
                self.index[state] = sid
                self.frontier.append((sid, state))
                self._targets(sid, state)
        self.owned = len(self.frontier)
        return len(self.frontier), (self._expand() if expand else None)

    def _targets(self, sid: int, state: S) -> None:
        for prop, targets in zip(self.liveness, self.targets, strict=True):
            if prop.target(state):
                targets.append(sid)

    def _expand(self) -> Expanded:
        """Step 1 (at the end of `seed` or `number`): the successors of the frontier, in one
        batch per owner, the first key each transition invariant fails at, the steps taken.

        Only the successors this worker does not know go out, each once: the others' owners
        have them already, or will have them by the next `receive`. A candidate keeps the key
        it was first met by, the smallest here (the frontier is expanded in order of number)."""
        count = self.count
        level: _Expansion[S] = _Expansion(self.made & 1, count)
        self.made += 1
        self.unsettled.append(level)
        parity = level.parity
        sent = level.sent
        keys: list[list[int]] = [[] for _ in range(count)]
        events: dict[str, int] = {}
        successors = self.successors
        canonical = self.canonical
        tinvs = self.tinvs
        owner = self.owner
        index = self.index
        live = [prop.counts for prop in self.liveness]
        pending = level.pending
        action_ids = self.action_ids
        transitions = 0
        self.expanded = array("q")
        self.fanout = array("q")
        for sid, state in self.frontier:
            base = sid << _POS_BITS
            position = -1
            for position, (action, concrete) in enumerate(successors(state)):
                key = base | position
                nxt = canonical(concrete) if canonical is not None else concrete
                for pid, holds in tinvs:
                    if pid not in events and not holds(state, action, concrete):
                        events[pid] = key
                got = index.get(nxt)
                if got is None:
                    o = owner(nxt)
                    batch = sent[o]
                    got = index[nxt] = -1 - (((o + count * len(batch)) << 1) | parity)
                    batch.append(nxt)
                    keys[o].append(key)
                if live:
                    mask = 0
                    for bit, counts in enumerate(live):
                        if counts(action):
                            mask |= 1 << bit
                    if mask:
                        aid = action_ids.get(action)
                        if aid is None:
                            aid = action_ids[action] = len(action_ids)
                        pending.append((key, got, aid, mask))
            if position >= _POS_MASK:
                raise ValueError(f"a state has more than {_POS_MASK} successors")
            self.expanded.append(sid)
            self.fanout.append(position + 1)
            transitions += position + 1
        out: list[bytes | None] = []
        for o in range(count):
            if o == self.me:
                self.keys = keys[o]
                out.append(None)
            else:
                message = (self.encoders[o].encode(sent[o]), array("q", keys[o]).tobytes())
                out.append(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
        return out, events, transitions

    def receive(self, batches: list[bytes | None], replies: list[bytes | None] | None
                ) -> array[int]:
        """Step 2 (round 1): settle the expansion before the last with the owners' `replies`
        (None at the first level); merge the last expansion's batches sent here; answer the
        sorted keys of the states new to this owner."""
        if replies is not None:
            self._settle(replies)
        index = self.index
        me = self.me
        count = self.count
        slots = self.unsettled[-1].sent[me]  # this worker's own candidates, then new ones
        slot_keys = self.keys
        self.refs = []
        for sender, blob in enumerate(batches):
            if sender == me or blob is None:
                self.refs.append(None)
                continue
            encoded, key_bytes = pickle.loads(blob)
            states = self.decoders[sender].decode(encoded)
            keys = array("q")
            keys.frombytes(key_bytes)
            refs = array("q")
            for state, key in zip(states, keys, strict=True):
                got = index.get(state)
                if got is None:
                    slot = len(slots)
                    index[state] = -1 - (((me + count * slot) << 1) | self.unsettled[-1].parity)
                    slots.append(state)
                    slot_keys.append(key)
                    refs.append(~slot)
                elif got >= 0:  # sent by a worker that did not know it yet
                    refs.append(got)
                else:  # a candidate of this level: states this worker owns are numbered by now
                    slot = ((-1 - got) >> 1) // count
                    if key < slot_keys[slot]:
                        slot_keys[slot] = key
                    refs.append(~slot)
            self.refs.append(refs)
        self.order = sorted(range(len(slots)), key=slot_keys.__getitem__)
        return array("q", (slot_keys[slot] for slot in self.order))

    def number(self, numbers: array[int], expand: bool, unless_violated: bool
               ) -> tuple[dict[str, int], list[bytes | None], int, Expanded | None]:
        """Step 3 (round 2), with step 1 of the next level: number the new states, check them,
        tell each sender the numbers, and expand them if `expand` (but not, if
        `unless_violated`, when one breaks an invariant: that stops the search)."""
        index = self.index
        level = self.unsettled[-1]
        slots = level.sent[self.me]
        frontier: list[tuple[int, S]] = []
        events: dict[str, int] = {}
        invariants = self.invariants
        sid_of = [0] * len(slots)
        for slot, sid in zip(self.order, numbers, strict=True):
            state = slots[slot]
            index[state] = sid
            sid_of[slot] = sid
            frontier.append((sid, state))
            for pid, holds in invariants:
                if pid not in events and not holds(state):
                    events[pid] = sid
            if self.liveness:
                self._targets(sid, state)
        self.owned += len(frontier)
        self.numbers[level.parity][self.me] = sid_of
        level.sent[self.me] = []  # numbered: `index` and `frontier` hold them
        self.order = []
        self.keys = []
        self.frontier = frontier
        self.numbered_from = (self.expanded, self.fanout)
        replies: list[bytes | None] = []
        for refs in self.refs:
            if refs is None:
                replies.append(None)
            else:
                replies.append(array("q", (ref if ref >= 0 else sid_of[~ref]
                                           for ref in refs)).tobytes())
        self.refs = []
        go = expand and not (unless_violated and events)
        return events, replies, len(frontier), (self._expand() if go else None)

    def _settle(self, replies: list[bytes | None]) -> None:
        """Learn the numbers of the states the oldest unsettled expansion sent to other workers
        (while this worker holds no more of theirs than of its own; the others are forgotten),
        and give that expansion's liveness edges their end points' numbers (an end point met
        again from the expansion before is numbered by then too)."""
        level = self.unsettled.pop(0)
        index = self.index
        count = self.count
        table = self.numbers[level.parity]
        room = int(self.owned * self.remote_share) - self.remote
        for owner, blob in enumerate(replies):
            if owner == self.me or blob is None:
                continue
            reply = array("q")
            reply.frombytes(blob)
            table[owner] = reply
            sent = level.sent[owner]
            learned = max(0, min(room, len(sent)))
            index.update(zip(sent[:learned], reply[:learned], strict=True))
            for state in sent[learned:]:
                del index[state]
            room -= learned
            self.remote += learned
        numbers = self.numbers
        edges = self.edges
        for key, end, aid, mask in level.pending:
            if end < 0:
                code = -1 - end
                slot, owner = divmod(code >> 1, count)
                end = numbers[code & 1][owner][slot]
            src = key >> _POS_BITS
            bit = 0
            while mask:
                if mask & 1:
                    srcs, dsts, labels = edges[bit]
                    srcs.append(src)
                    dsts.append(end)
                    labels.append(aid)
                mask >>= 1
                bit += 1

    def transitions_before(self, sid: int) -> int:
        """Steps taken from states numbered below `sid` in the expansion whose new states were
        numbered last (an expansion of them may have followed in the same round)."""
        expanded, fanout = self.numbered_from
        return sum(n for s, n in zip(expanded, fanout, strict=True) if s < sid)

    def finish(self, replies: list[bytes | None] | None
               ) -> tuple[list[tuple[bytes, bytes, bytes]], list[A], list[bytes]]:
        """The liveness graph this worker holds, once the last expansion is settled with
        `replies`: each property's edges (sources, ends and labels, in the order taken) and
        target states, and the actions the labels number."""
        if replies is not None:
            self._settle(replies)
        actions = sorted(self.action_ids, key=self.action_ids.__getitem__)
        return ([(srcs.tobytes(), dsts.tobytes(), labels.tobytes())
                 for srcs, dsts, labels in self.edges],
                actions, [t.tobytes() for t in self.targets])


# ---------------------------------------------------------------------------------------------
# Pools of workers


class Pool(Protocol):
    """Runs one `Partition` per worker and calls a method on all of them at once."""

    @property
    def workers(self) -> int: ...

    def call_all(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Call ``Partition.method(*args[i])`` on worker i, for every i; wait for all."""
        ...

    def close(self) -> None: ...


class InProcessPool:
    """Every partition in this process, called one after another: the work of a split search
    without any process or pipe (for tests, and to measure what splitting costs in work)."""

    def __init__(self, model_factory: Callable[[], Model[Any, Any]], workers: int,
                 portable: bool = False) -> None:
        self.parts = [Partition(model_factory, me, workers, portable) for me in range(workers)]

    @property
    def workers(self) -> int:
        return len(self.parts)

    def call_all(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [getattr(part, method)(*arg) for part, arg in zip(self.parts, args, strict=True)]

    def close(self) -> None:
        pass


def serve(conn: Connection, model_factory: Callable[[], Model[Any, Any]], me: int,
          count: int, portable: bool) -> None:
    """A worker process's loop: calls in, results (or the error's traceback) out."""
    gc.disable()  # as in the engine: states hold no cycles, and collections would walk them all
    part: Partition[Any, Any] | None = None
    failure = ""
    try:
        part = Partition(model_factory, me, count, portable)
    except Exception:
        failure = traceback.format_exc()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        method, args = message
        if part is None:
            conn.send(("error", failure))
            continue
        try:
            conn.send(("ok", getattr(part, method)(*args)))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class WorkerError(RuntimeError):
    """A worker failed; the message carries its traceback."""


class ProcessPool:
    """Workers as processes of this machine, one pipe each (``peerkit check --workers N``).

    Batches go through the coordinator (worker to coordinator to worker): on one machine a pipe
    carries them at memory speed, and it keeps the pool this small.
    """

    def __init__(self, model_factory: Callable[[], Model[Any, Any]], workers: int) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        methods = multiprocessing.get_all_start_methods()
        # fork: no need to pickle the model factory (a lambda will do) and a fast start
        fork = "fork" in methods
        context: Any = multiprocessing.get_context("fork" if fork else "spawn")
        # forked workers share this process's string-hash salt and object addresses, so
        # Python's own hash chooses the same owner in each; spawned ones need the portable one
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for me in range(workers):
            mine, theirs = context.Pipe()
            proc = context.Process(target=serve, args=(theirs, model_factory, me, workers,
                                                       not fork),
                                   daemon=True, name=f"peerkit-worker-{me}")
            proc.start()
            theirs.close()
            self._conns.append(mine)
            self._procs.append(proc)

    @property
    def workers(self) -> int:
        return len(self._conns)

    def call_all(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        for conn, arg in zip(self._conns, args, strict=True):
            conn.send((method, arg))
        results = []
        errors = []
        for me, conn in enumerate(self._conns):
            try:
                status, value = conn.recv()
            except EOFError:
                status, value = "error", "the worker process ended"
            if status == "ok":
                results.append(value)
            else:
                errors.append(f"worker {me}: {value}")
        if errors:
            raise WorkerError("\n".join(errors))
        return results

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for conn in self._conns:
            conn.close()


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# The coordinator


class _Replayed(Sequence[S], Generic[S, A]):
    """The states by number, recomputed on demand from each one's parent and position."""

    def __init__(self, model: Model[S, A], canonical: Callable[[S], S], parent: array[int],
                 position: array[int]) -> None:
        self.model = model
        self.canonical = canonical
        self.parent = parent
        self.position = position
        self.initial: list[S] = []
        self.n = 0
        self._known: dict[int, S] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, sid: int) -> S:  # type: ignore[override]
        if sid < 0:
            sid += self.n
        if not 0 <= sid < self.n:
            raise IndexError(sid)
        chain = []
        while sid >= len(self.initial) and sid not in self._known:
            chain.append(sid)
            sid = self.parent[sid]
        state = self.initial[sid] if sid < len(self.initial) else self._known[sid]
        for nid in reversed(chain):
            wanted = self.position[nid]
            for position, (_action, nxt) in enumerate(self.model.successors(state)):
                if position == wanted:
                    state = self.canonical(nxt)
                    break
            else:
                raise AssertionError("successors are not deterministic: a step vanished")
            self._known[nid] = state
        return state

    def __iter__(self) -> Iterator[S]:
        for sid in range(self.n):
            yield self[sid]


class _ParallelSearch(_Search[S, A]):
    """engine._Search with the seeding and the search done by a pool of workers."""

    def __init__(self, model: Model[S, A], bounds: Bounds, progress: ProgressCallback | None,
                 progress_interval: float, pool: Pool) -> None:
        super().__init__(model, bounds, progress, progress_interval)
        self.pool = pool
        self.position = array("q")
        self.replayed: _Replayed[S, A] = _Replayed(model, self._canonical, self.parent,
                                                   self.position)
        self.states = self.replayed  # type: ignore[assignment]
        self.flags: list[bytearray] = []
        self.frontier = 0  # states in the level about to be expanded, over all workers
        self.expansion: list[Expanded | None] = []  # each worker's expansion of that level
        self.level_start = 0  # steps taken before the level being expanded

    def _target_ids(self, prop: LivenessLike[S, A]) -> array[int]:
        flags = next(f for p, f in zip(self.liveness, self.flags, strict=True) if p is prop)
        return array("q", (i for i, flag in enumerate(flags) if flag))

    def _seed(self) -> None:
        first: dict[S, int] = {}
        replayed = self.replayed
        for concrete in self.model.initial_states():
            state = self._canonical(concrete)
            if state in first:
                continue
            if self.bounds.max_states is not None and replayed.n >= self.bounds.max_states:
                raise _Stop(f"state bound {self.bounds.max_states} reached")
            sid = first[state] = replayed.n
            replayed.initial.append(state)
            replayed.n += 1
            self.parent.append(-1)
            self.position.append(-1)
            self.concrete_initial[sid] = concrete
            self._state_failed(sid)
        initial = [(sid, state) for state, sid in first.items()]
        expand = self._goes_on(len(initial), 0)
        seeded = self.pool.call_all("seed", [(initial, expand)] * self.pool.workers)
        self.frontier = sum(frontier for frontier, _ in seeded)
        self.expansion = [expansion for _, expansion in seeded]

    def _goes_on(self, frontier: int, depth: int) -> bool:
        """Whether the search will expand a level of `frontier` states at `depth` as far as the
        bounds on depth and time can tell now: if not, the workers do not expand it ahead."""
        bounds = self.bounds
        return frontier > 0 and (bounds.max_depth is None or depth < bounds.max_depth) and (
            bounds.max_seconds is None
            or time.perf_counter() - self.started <= bounds.max_seconds)

    def _stops_in(self, level: list[int], first: int, expanded: list[Expanded]) -> bool:
        """Whether the level being numbered stops the search whatever its states are: the
        state bound falls in it, or a step of it breaks a transition invariant that stops it."""
        max_states = self.bounds.max_states
        if max_states is not None and first + len(level) > max_states:
            return True
        return self.bounds.stop_at_first and any(
            pid not in self.violated for worker in expanded for pid in worker[1])

    def _bfs(self) -> None:
        pool = self.pool
        count = pool.workers
        bounds = self.bounds
        replayed = self.replayed
        # per worker, the numbers the owners answered for the states its last expansion sent
        replies: list[list[bytes | None] | None] = [None] * count
        depth = 0
        while self.frontier:
            if bounds.max_depth is not None and depth >= bounds.max_depth:
                raise _Stop(f"depth bound {bounds.max_depth} reached")
            self._tick(len(replayed) - self.frontier, depth)
            # the workers expanded this level in the round that numbered it (or seeded it)
            expanded = [e for e in self.expansion if e is not None]
            if len(expanded) < count:
                raise AssertionError("a worker did not expand a level the search goes on with")
            keys = pool.call_all("receive", [([expanded[i][0][j] for i in range(count)],
                                              replies[j]) for j in range(count)])
            level = sorted(k for mine in keys for k in mine)
            first = len(replayed)
            rank = {key: first + i for i, key in enumerate(level)}
            expand = (self._goes_on(len(level), depth + 1)
                      and not self._stops_in(level, first, expanded))
            numbered = pool.call_all("number", [(array("q", (rank[k] for k in mine)), expand,
                                                 bounds.stop_at_first) for mine in keys])
            for key in level:
                self.parent.append(key >> _POS_BITS)
                self.position.append(key & _POS_MASK)
            replayed.n = first + len(level)
            self.level_start = self.transitions
            self._level_events(level, first, expanded, numbered)
            self.transitions = self.level_start + sum(e[2] for e in expanded)
            replies = [[numbered[j][1][i] for j in range(count)] for i in range(count)]
            self.frontier = sum(n[2] for n in numbered)
            self.expansion = [n[3] for n in numbered]
            depth += 1
        if self.liveness:
            self._collect_graph(pool.call_all("finish", [(replies[i],) for i in range(count)]))

    def _level_events(self, level: list[int], first: int, expanded: list[Any],
                      numbered: list[Any]) -> None:
        """Decide the level's violations in the order the sequential search meets them, and
        stop where it would stop (a violation, or the state bound)."""
        max_states = self.bounds.max_states
        stop_key: int | None = None
        if max_states is not None and first + len(level) > max_states:
            stop_key = level[max_states - first]
        events: list[tuple[int, int, int, str]] = []  # key, kind (0 state, 1 step), order, id
        order = {t.id: i for i, t in enumerate(self.transition_invariants)}
        for worker in numbered:
            for pid, sid in worker[0].items():
                key = level[sid - first]
                events.append((key, 0, 0, pid))
        for worker in expanded:
            for pid, key in worker[1].items():
                events.append((key, 1, order[pid], pid))
        events.sort()
        full_states = len(self.replayed)
        for key, kind, _, pid in events:
            if stop_key is not None and key >= stop_key:
                break
            if pid in self.violated:
                continue
            if self.bounds.stop_at_first:
                # this violation stops the search: count as the sequential search would there
                self._truncate(level, first, key, inclusive=True)
            if kind == 0:
                self._state_failed(first + bisect.bisect_left(level, key))
            else:
                sid, position = key >> _POS_BITS, key & _POS_MASK
                state = self.replayed[sid]
                for at, (action, concrete) in enumerate(self.model.successors(state)):
                    if at == position:
                        self._transition_violation(pid, sid, action, concrete)
                        break
            self.replayed.n = full_states
        if stop_key is not None:
            self._truncate(level, first, stop_key, inclusive=False)
            raise _Stop(f"state bound {max_states} reached")

    def _truncate(self, level: list[int], first: int, key: int, inclusive: bool) -> None:
        """Count the states and steps as the sequential search has them at `key`: the new
        states discovered before it (and by it, if `inclusive`), the steps up to it."""
        kept = (bisect.bisect_right if inclusive else bisect.bisect_left)(level, key)
        self.replayed.n = first + kept
        sid, position = key >> _POS_BITS, key & _POS_MASK
        before = sum(self.pool.call_all("transitions_before", [(sid,)] * self.pool.workers))
        self.transitions = self.level_start + before + position + 1

    def _record(self, *args: Any, **kwargs: Any) -> None:
        try:
            super()._record(*args, **kwargs)
        except _Stop:
            # the search stops here: forget the states numbered after the violation
            del self.parent[len(self.replayed):]
            del self.position[len(self.replayed):]
            raise

    def _collect_graph(self, parts: list[Any]) -> None:
        """The workers' liveness graphs as the engine's: each property's edges by source.

        A source's edges all come from the worker that expanded it, in the order taken, so a
        stable sort of the workers' edges by source is the order the engine takes them in."""
        labels: dict[Any, int] = {}
        n = len(self.replayed)
        self.flags = [bytearray(n) for _ in self.liveness]
        glob: list[list[int]] = []
        for _, actions, targets in parts:
            glob.append([labels.setdefault(action, len(labels)) for action in actions])
            for flags, blob in zip(self.flags, targets, strict=True):
                ids = array("q")
                ids.frombytes(blob)
                for sid in ids:
                    flags[sid] = 1
        for bit, ((srcs, dsts), lab) in enumerate(zip(self.edges, self.labels, strict=True)):
            for (edges, _, _), number in zip(parts, glob, strict=True):
                src_b, dst_b, lab_b = edges[bit]
                srcs.frombytes(src_b)
                dsts.frombytes(dst_b)
                if lab is not None:
                    got = array("i")
                    got.frombytes(lab_b)
                    lab.extend(array("i", map(number.__getitem__, got)))
            if len(parts) > 1:
                order = sorted(range(len(srcs)), key=srcs.__getitem__)
                srcs[:] = array("q", map(srcs.__getitem__, order))
                dsts[:] = array("q", map(dsts.__getitem__, order))
                if lab is not None:
                    lab[:] = array("i", map(lab.__getitem__, order))


def check(
    model_factory: Callable[[], Model[S, A]],
    workers: int | None = None,
    bounds: Bounds | None = None,
    progress: ProgressCallback | None = None,
    progress_interval: float = 1.0,
    pool: Pool | None = None,
) -> Result[S, A]:
    """engine.check over `workers` processes (default: the cores there are), or over `pool`.

    `model_factory` makes the model; each worker calls it once (a process pool forks where the
    system can, so the factory need not be picklable there; a pool on other machines needs a
    factory it can send, such as ``functools.partial`` of a module-level function).
    """
    if bounds is None:
        bounds = Bounds()
    if not isinstance(bounds, Bounds):
        raise TypeError(f"bounds must be a Bounds, not {type(bounds).__name__}")
    model = model_factory()
    own = pool is None
    if pool is None:
        pool = ProcessPool(model_factory, default_workers() if workers is None else workers)
    try:
        return _ParallelSearch(model, bounds, progress, progress_interval, pool).run()
    finally:
        if own:
            pool.close()

"""The conformance suite against running servers (``pytest --peerkit-target``): inert without the
option, passes against two bug-free ``peerkit serve`` processes, fails against bugged ones.

The servers are real processes (127.0.0.1, a port the OS picks, temporary data dirs), stopped
in the test.

Which bugs must fail here: all six. ``stored-map`` and ``terminated-undeletable`` (every run,
no test hooks needed); ``no-reconnect``, ``dial-deleted``, ``termination-race`` and
``deletion-no-stop`` (every run, through the optional test hooks: a connection reset, a deletion
held, the acceptor's receiving held so that the dialer's cancel reaches it before it reads
Terminated, a failover with deletion work pending and the read of the deletion routines, which
shows the deposed term's routine running on).

The bug-free run goes through the plugin in a pytest subprocess, as a porter runs it; the bugged
runs call the suite's scenarios in this process (the same code, a pytest start-up less each).

May import: the standard library, pytest, trio, ``peerkit.conformance``, ``peerkit.model``, and
of the implementation only its transport's status types and the control service's messages.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import trio

from peerkit.conformance.abstraction import model_view
from peerkit.conformance.remote import (
    REMOTE_CONFIG,
    Target,
    Timing,
    hooks_problem,
    run_scenario,
)
from peerkit.conformance.target_suite import HOOK_SCENARIOS, SCENARIOS
from peerkit.conformance.trace import TraceDivergence, TraceValidator
from peerkit.impl.transport import StatusCode, StreamFailed
from peerkit.model import actions as A
from peerkit.model.machine import PeeringModel
from peerkit.model.state import World

DEADLINE = 120.0  # one suite run's bound; it takes seconds
START_DEADLINE = 20.0


@contextmanager
def servers(tmp: Path, bugs: tuple[str, ...], hooks: bool = True) -> Iterator[tuple[str, str]]:
    """Two ``peerkit serve`` processes (dc1, dc2) on 127.0.0.1, port 0, started together (with
    their test hooks on unless ``hooks`` is false); yields their addresses, stops them."""
    procs = []
    with ExitStack() as stack:
        for name in ("dc1", "dc2"):
            log = stack.enter_context((tmp / f"{name}.log").open("w"))
            argv = [sys.executable, "-m", "peerkit", "serve", "--name", name, "--data-dir",
                    str(tmp / name), "--grpc-addr", "127.0.0.1:0", "--plaintext",
                    "--log-level", "warning"]
            for b in bugs:
                argv += ["--bug", b]
            if hooks:
                argv.append("--test-hooks")
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
            stack.callback(stop, proc)
            procs.append(proc)
        addresses = []
        for proc, name in zip(procs, ("dc1", "dc2"), strict=True):
            assert proc.stdout is not None
            line = proc.stdout.readline()  # printed once the server listens
            assert " listening on " in line, (line, (tmp / f"{name}.log").read_text())
            addresses.append(line.split(" listening on ")[1].split()[0])
        yield addresses[0], addresses[1]


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=START_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=DEADLINE)


@pytest.mark.grpc
@pytest.mark.slow
def test_the_suite_passes_against_bug_free_servers(tmp_path: Path) -> None:
    """Through the plugin, as a porter runs it: a pytest subprocess with --peerkit-target,
    the servers' test hooks on, so every scenario runs."""
    with servers(tmp_path, ()) as (a, b):
        work = tmp_path / "run"
        work.mkdir()
        done = run_pytest(work, f"--peerkit-target={a},{b}", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(SCENARIOS) + len(HOOK_SCENARIOS)} passed" in done.stdout, done.stdout
    assert "skipped" not in done.stdout, done.stdout


@pytest.mark.grpc
@pytest.mark.slow
@pytest.mark.parametrize(("bug", "scenario", "expect", "settle"), [
    ("stored-map", "replicate_and_churn", "nearest model candidate 1", 20.0),
    ("terminated-undeletable", "acceptor_deletes_then_peer_again", "nearest model candidate 1",
     20.0),
    # the dialer never redials after the reset (a bug-free one does 2 s later): the servers
    # settle where the model cannot
    ("no-reconnect", "reset_then_redial", "the implementation failed to do something", 4.0),
    # the redial is accepted for the acceptor's row, held marked for deletion
    ("dial-deleted", "reset_then_acceptor_deletes", "dc1.tracker: model (('dc2', False),)", 6.0),
    # the acceptor reads nothing until the dialer is done: the dialer's cancel discards the
    # unread Terminated, so the acceptor is never told
    ("termination-race", "dialer_deletes_unread",
     "dc1.rows: model (('dc2', 'TERMINATED'),) / impl (('dc2', 'FAILING'),)", 12.0),
    # the failover comes with the deletion work pending (held): the deposed term's routine runs
    # on once released, which the read of the deletion routines (DeletionRoutines) shows
    ("deletion-no-stop", "reset_then_acceptor_deletes", "dc1.zombie: model False / impl True",
     6.0),
])
def test_the_suite_fails_against_a_bugged_server(tmp_path: Path, bug: str, scenario: str,
                                                  expect: str, settle: float) -> None:
    """The scenario of the suite that exposes the bug, run in this process (a pytest start-up
    less per bug): it diverges. (Where the bug never settles, a settle deadline above the
    bug-free time instead of 20 s saves time.) The servers of the bugs that need no test hooks
    run without them: the probe says so, and through the plugin (one pytest start-up, no
    scenario run) the scenarios that need them are skipped, with one line saying why."""
    every = {**SCENARIOS, **HOOK_SCENARIOS}
    hooks = scenario in HOOK_SCENARIOS
    with servers(tmp_path, (bug,), hooks=hooks) as (a, b):
        target = Target((a, b), Timing(settle_deadline=settle))
        problem = hooks_problem(target)
        if hooks:
            assert problem is None, problem
        else:  # started without --test-hooks: the probe is refused
            assert problem is not None and "has no test hooks enabled" in problem, problem
        with pytest.raises(TraceDivergence) as caught:
            run_scenario(target, every[scenario])
        if bug == "stored-map":
            work = tmp_path / "run"
            work.mkdir()
            done = run_pytest(work, f"--peerkit-target={a},{b}", "-q", "-k",
                              " or ".join(HOOK_SCENARIOS))
    text = str(caught.value)
    assert "trace validation found a divergence" in text
    assert "the shortest observed prefix the model cannot produce" in text
    assert expect in text, text
    if bug == "stored-map":
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{len(HOOK_SCENARIOS)} skipped" in done.stdout, done.stdout
        assert (f"peerkit: {len(HOOK_SCENARIOS)} scenario(s) skipped: the server at {a} has no "
                "test hooks enabled (FAILED_PRECONDITION: test hooks are disabled on this "
                "server (peerkit serve --test-hooks enables them))") in done.stdout, done.stdout


def test_the_plugin_is_inert_without_the_option(tmp_path: Path) -> None:
    """Without ``--peerkit-target`` the suite is not collected, the plugin's fixture skips,
    and loading the plugin imports neither gRPC nor trio nor the implementation."""
    (tmp_path / "test_mine.py").write_text(
        "def test_mine(): pass\n"
        "def test_fixture(peerkit_target): raise AssertionError('ran')\n")
    done = run_pytest(tmp_path, "-q", "-rs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout, done.stdout
    assert "no --peerkit-target given" in done.stdout
    assert "target_suite" not in done.stdout
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, peerkit.conformance.plugin; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'trio') "
         "or m.startswith('peerkit.impl') or m.startswith('peerkit.model')))"],
        capture_output=True, text=True, timeout=DEADLINE)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_a_malformed_target_is_a_usage_error(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, "--peerkit-target=127.0.0.1:1")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "takes two different addresses" in done.stderr


# ---------------------------------------------------------------------------------------------
# trace validation on its own (no servers)


def _validator() -> tuple[PeeringModel, TraceValidator]:
    model = PeeringModel(REMOTE_CONFIG)
    return model, TraceValidator(model, model.initial_states(), header="unit")


def _peered() -> tuple[PeeringModel, TraceValidator]:
    """The start observed, then a token on dc1 and its establishment on dc2 (nothing since)."""
    model, trace = _validator()
    [w] = model.initial_states()
    trace.observe(model_view(w, (False, False)), "start")
    trace.pin([A.GenerateToken(0, 1)], "token")
    [key] = {t for w in trace.worlds() for t in w.tokens}
    trace.pin([A.Establish(1, 0, key[1])], "establish")
    return model, trace


def test_protocol_steps_between_entries_are_allowed() -> None:
    """Token, establish, then a view only protocol steps reach (the stream up, replicated):
    accepted without the steps in between being observed."""
    model, trace = _peered()
    up = [w for w in _reachable(model, trace.worlds())
          if all(v.tracker and all(c for _p, c in v.tracker)
                 for v in model_view(w, (False, False)).clusters)]
    assert up, "the model reaches a connected stream"
    trace.observe(model_view(up[0], (False, False)), "connected")  # no divergence
    assert [e.kind for e in trace.entries] == ["view", "action", "action", "view"]


def test_a_view_the_model_cannot_reach_is_the_end_of_the_reported_prefix() -> None:
    model, trace = _validator()
    [w] = model.initial_states()
    start = model_view(w, (False, False))
    trace.observe(start, "start")
    trace.pin([A.GenerateToken(0, 1)], "token")
    # dc2 shows a TERMINATED row out of nowhere
    dc1, dc2 = start.clusters
    wrong = start._replace(clusters=(dc1, dc2._replace(rows=(("dc1", "TERMINATED"),))))
    with pytest.raises(TraceDivergence) as caught:
        trace.observe(wrong, "after the token")
    text = str(caught.value)
    assert "the shortest observed prefix the model cannot produce (3 entries" in text
    assert ">>   3. observed after after the token" in text
    assert "dc2.rows: model () / impl (('dc1', 'TERMINATED'),)" in text


def test_a_trace_that_never_settles_is_refused() -> None:
    """Token and establish, then nothing more observed: the model must still dial, so
    requiring a settled state right after establishing (no protocol step allowed) fails."""
    _model, trace = _peered()
    with pytest.raises(TraceDivergence, match=r"none of the .* candidate model states is settled"):
        trace.require_settled("at once")


def _reachable(model: PeeringModel, start: list[World]) -> list[World]:
    seen = list(start)
    todo = list(start)
    while todo:
        w = todo.pop()
        for a in model.enabled(w):
            if A.is_protocol(a):
                n = model.step(w, a)
                if n not in seen:
                    seen.append(n)
                    todo.append(n)
    return seen


def test_a_server_that_does_not_answer_is_named() -> None:
    from peerkit.conformance.remote import unreachable

    with socket.socket() as sock:  # bound, never listening: refused at once
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        problem = unreachable(Target((address, address)))
    assert problem is not None and problem.startswith(f"the server at {address} does not answer")


class _Routines:
    """A client whose DeletionRoutines answers ``answer`` (a list) or raises it."""

    def __init__(self, answer: object) -> None:
        self.answer = answer

    async def deletion_routines(self) -> object:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize("code", [StatusCode.UNIMPLEMENTED, StatusCode.FAILED_PRECONDITION])
def test_a_target_without_the_routines_read_gets_no_zombie_bit(code: StatusCode) -> None:
    """A port may lack DeletionRoutines (or have the hooks off): the zombie bit is then not
    read, never set, and the trace says so; any other refusal is an error, not a skip."""
    from peerkit.conformance.remote import Names, Session, late_passes
    from peerkit.proto.admin_pb2 import DeletionRoutine

    assert trio.run(late_passes, _Routines(StreamFailed(code, "no"))) is None
    with pytest.raises(StreamFailed):
        trio.run(late_passes, _Routines(StreamFailed(StatusCode.UNAVAILABLE, "down")))
    routines = [DeletionRoutine(Term=1, TermEnded=True, PassesAfterTermEnded=3),
                DeletionRoutine(Term=2, TermEnded=False, Running=True)]
    assert trio.run(late_passes, _Routines(routines)) == {1: 3}  # ended terms only

    clients = [_Routines(routines), _Routines(StreamFailed(code, "no"))]
    session = Session(clients, ["a", "b"], Names("ptest"))  # type: ignore[arg-type]
    trio.run(session.start)
    assert session.late_base == [{1: 3}, None]
    assert session.trace.entries[-1].what.startswith("the zombie bit is not observed")

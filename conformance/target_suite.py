"""The conformance suite against two running servers: the scenarios, as pytest tests.

One job: name the scenarios (``SCENARIOS``; ``HOOK_SCENARIOS``, which need the optional test
hooks) and run each through ``remote.run_scenario`` against the servers
given by ``--peerkit-target=ADDR_A,ADDR_B`` (the ``peerkit_target`` fixture of
``peerkit.conformance.plugin``; the first address is the model's ``dc1``, which generates the
tokens and exports the services, the second ``dc2``, which establishes and dials). Collected only
when that option is given (the plugin adds this file to the run).

Each scenario drives both servers through their RPCs, observes them after every step (a view
they rest in) and lets them settle at the end (only there: a wait for settling costs real time,
up to a sync pass's rate limit of 5 s); trace validation (``trace``) requires the whole
observed sequence to be a behaviour of the model, and a settled model state at the end.

Which scenario exposes which historical bug of the reference (``peerkit serve --bug NAME``),
measured against ``peerkit serve`` (tests/conformance/test_target.py):

* ``stored-map``: every scenario (the acceptor tears down the new stream and the dialer is told
  Terminated);
* ``terminated-undeletable``: ``test_acceptor_deletes_then_peer_again`` (the told side's
  TERMINATED row cannot be deleted);
* ``no-reconnect``: ``test_reset_then_redial`` (after the reset the dialer never redials: the
  servers rest where the model must still dial);
* ``dial-deleted``: ``test_reset_then_acceptor_deletes`` (the redial is accepted for the row
  held marked for deletion: its tracker entry reads connected);
* ``termination-race``: ``test_dialer_deletes_unread`` (the acceptor reads nothing until the
  dialer has sent Terminated and cancelled: the cancel discards the unread Terminated, and the
  acceptor stays FAILING where the model is told); ``test_dialer_deletes`` only by chance (when
  the cancel overtakes Terminated on the wire);
* ``deletion-no-stop``: ``test_reset_then_acceptor_deletes`` (the failover comes while the
  deletion is held with work pending: once released, the deposed term's routine runs on, which
  only the test hook ``DeletionRoutines`` shows: it only repeats the new term's deletes).

The last three scenarios need the control service's optional test hooks (``peerkit_hooks``
fixture: skipped, saying why, when a server lacks them).

May import: the standard library and ``peerkit.conformance.remote`` (by its absolute name).
"""

from __future__ import annotations

# absolute: pytest may import this file under another module name (it collects it by path)
from peerkit.conformance.remote import Session, Target, run_scenario


async def replicate_and_churn(s: Session) -> None:
    """Peer; the exported services arrive; unexport, deregister, register, export again."""
    await s.register_and_export()
    await s.peer()
    await s.poke(0)
    await s.export(0, "api", on=False)
    await s.register(0, "web", on=False)
    await s.register(0, "web", on=True)
    await s.export(0, "api", on=True)
    await s.settle()


async def acceptor_deletes_then_peer_again(s: Session) -> None:
    """The acceptor deletes: the dialer is told (TERMINATED) and cleans up; its operator
    deletes the TERMINATED row; then the two peer again under the same names."""
    await s.register_and_export()
    await s.peer()
    await s.poke(0)
    await s.delete(0)
    await s.until_row(1, "TERMINATED", "dc2 is told")
    await s.delete(1)
    await s.peer()
    await s.settle()


async def dialer_deletes(s: Session) -> None:
    """The dialer deletes: the acceptor is told (TERMINATED); its operator cleans up."""
    await s.register_and_export()
    await s.peer()
    await s.poke(0)
    await s.delete(1)
    await s.until_row(0, "TERMINATED", "dc1 is told")
    await s.delete(0)
    await s.settle()


# -- scenarios that need the optional test hooks (ResetStream, Failover, HoldDeletion,
# HoldReceive; DeletionRoutines when the server has it) -------------------------------------------


async def reset_then_redial(s: Session) -> None:
    """The dialer's stream is reset: it must redial and the servers settle connected
    (``no-reconnect`` never redials); then the dialer's leader fails over, and the new term
    dials again."""
    await s.register_and_export()
    await s.peer()
    await s.reset(1)
    await s.settle("settle after the reset")
    await s.failover(1)
    await s.settle()


async def reset_then_acceptor_deletes(s: Session) -> None:
    """The acceptor's deletion is held; the stream is reset and the acceptor deletes before the
    dialer redials (2 s later): the redial must be answered with Terminated, so the dialer is
    told (``dial-deleted`` accepts it for the marked row). Then the acceptor fails over with
    its deletion still held, and the new term's routine finishes it once released; the old
    term's must not run on (``deletion-no-stop`` does: the zombie bit, read through the test
    hook ``DeletionRoutines``)."""
    await s.register_and_export()
    await s.peer()
    await s.hold_deletion(0, True)
    await s.reset(1, observe=False)
    await s.delete(0)
    await s.until_row(1, "TERMINATED", "dc2 is told")
    await s.failover(0)
    await s.hold_deletion(0, False)
    await s.settle()


async def dialer_deletes_unread(s: Session) -> None:
    """The acceptor stops reading its stream (HoldReceive) and the dialer deletes: its
    Terminated waits unread in flight until the dialer's row and stream are gone (the dialer has
    sent everything it will send), then the acceptor reads again and must be told (settled:
    TERMINATED). A dialer that cancels right after Terminated (``termination-race``) has its
    cancel reach the acceptor first, which discards the unread Terminated: the acceptor is
    never told (FAILING)."""
    await s.register_and_export()
    await s.peer()
    await s.hold_receive(0, True)
    await s.delete(1)
    # the row goes first; the stream's teardown (Terminated) waits for dc2's next sync pass
    await s.until(lambda v: not v.clusters[1].rows and not v.clusters[1].tracker,
                  "dc2's row and stream are gone")
    await s.hold_receive(0, False)
    await s.settle()


SCENARIOS = {
    "replicate_and_churn": replicate_and_churn,
    "acceptor_deletes_then_peer_again": acceptor_deletes_then_peer_again,
    "dialer_deletes": dialer_deletes,
}

#: the scenarios that need the optional test hooks (skipped, saying so, on a target without)
HOOK_SCENARIOS = {
    "reset_then_redial": reset_then_redial,
    "reset_then_acceptor_deletes": reset_then_acceptor_deletes,
    "dialer_deletes_unread": dialer_deletes_unread,
}


def test_replicate_and_churn(peerkit_target: Target) -> None:
    run_scenario(peerkit_target, replicate_and_churn)


def test_acceptor_deletes_then_peer_again(peerkit_target: Target) -> None:
    run_scenario(peerkit_target, acceptor_deletes_then_peer_again)


def test_dialer_deletes(peerkit_target: Target) -> None:
    run_scenario(peerkit_target, dialer_deletes)


def test_reset_then_redial(peerkit_hooks: Target) -> None:
    run_scenario(peerkit_hooks, reset_then_redial)


def test_reset_then_acceptor_deletes(peerkit_hooks: Target) -> None:
    run_scenario(peerkit_hooks, reset_then_acceptor_deletes)


def test_dialer_deletes_unread(peerkit_hooks: Target) -> None:
    run_scenario(peerkit_hooks, dialer_deletes_unread)

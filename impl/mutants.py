"""The implementation's mutant switches: the model's mutation catalog, made again in impl/'s code.

One job: name the mutants of the model's catalog (``peerkit.model.mutants``) that the
implementation can make too, say where and how each is made (``IMPL_MUTANTS``), say why each
other killed catalog mutant is not made here (``NOT_PORTED``), and validate a set of names.

A mutant is switched on by name with ``PeeringServer(mutants=...)`` (and so
``impl.testing.running_cluster(mutants=...)``); none is ever on by default, and with none on the
code behaves exactly as without this module. Each switch site is a plain
``if "name" in self.mutants:`` (or ``...mutants`` of the config it reads) with a comment. The
names are the catalog's own, so a conformance run with a mutant in the implementation and the
unmutated model asks: would conformance catch the same mistake the model checker catches?
Mutant switches are kept apart from the historical bug switches (``bugs=``): those are upstream's
real mistakes; these are plausible ones nobody has made.

``tests/conformance/test_mutants.py`` checks that IMPL_MUTANTS, NOT_PORTED and the model's
EQUIVALENT together are the whole catalog, that every switch here is read somewhere in impl/,
and that conformance catches each ported mutant.

May import: the standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["IMPL_MUTANTS", "NOT_PORTED", "validate_mutants"]

#: catalog name -> where and how the implementation makes that mistake (one line)
IMPL_MUTANTS: Final[Mapping[str, str]] = {
    # -- the stream handler (impl/stream.py), the acceptor's first-message checks (server.py)
    "drop-accept:acceptor-new-open-valid":
        "stream.py run/_handle_unguarded: an accepted stream is not registered in the tracker "
        "and sends no bundle, list or services, but is served",
    "drop-send-terminated-only:acceptor-new-open-peering-marked-for-deletion":
        "server.py _check_open: a dial of a row marked for deletion is refused (Aborted) "
        "without sending Terminated first",
    "drop-import:acceptor-open-response":
        "stream.py _on_responses: the acceptor drops a Response (no store write, no ACK)",
    "drop-import:dialer-open-response":
        "stream.py _on_responses: the dialer drops a Response (no store write, no ACK)",
    "drop-terminate:acceptor-open-terminated":
        "stream.py _on_terminated: the acceptor, told Terminated, neither terminates its row "
        "nor marks the stream disconnected",
    "drop-terminate:dialer-open-terminated":
        "stream.py _on_terminated: the dialer, told Terminated, neither terminates its row nor "
        "marks the stream disconnected",
    "drop-close-send:dialer-open-terminated":
        "stream.py _after_nil: the dialer, told Terminated, drains without CloseSend",
    "drop-close-send:dialer-open-teardown":
        "stream.py _after_nil: the dialer, after sending Terminated, drains without CloseSend",
    "drop-disconnect:acceptor-open-eof":
        "stream.py _on_inbound_end: the acceptor, meeting EOF while serving, leaves the tracker "
        "entry connected",
    "drop-disconnect:acceptor-open-reset":
        "stream.py _on_inbound_end: the acceptor, meeting a cancel/reset while serving, leaves "
        "the tracker entry connected",
    "drop-disconnect:dialer-open-error-status":
        "stream.py _on_inbound_end: the dialer, meeting an error status (not UNAVAILABLE), "
        "leaves the tracker entry connected (it still retries)",
    "drop-disconnect:dialer-open-reset":
        "stream.py _on_inbound_end: the dialer, meeting a reset (UNAVAILABLE), leaves the "
        "tracker entry connected (it still retries)",
    "drop-send-terminated:acceptor-open-teardown":
        "stream.py _on_teardown: the acceptor's teardown sends no Terminated and keeps its "
        "tracker entry, then drains",
    "drop-send-terminated:dialer-open-teardown":
        "stream.py _on_teardown: the dialer's teardown sends no Terminated and keeps its "
        "tracker entry, then CloseSend and drain",
    "dialer-no-drain":
        "stream.py _after_nil: the dialer, after sending Terminated, half-closes and returns "
        "without draining (its connection then closes)",
    "acceptor-teardown-keeps-tracker":
        "stream.py _on_teardown: the acceptor sends Terminated but leaves its tracker entry "
        "connected",
    "dialer-gives-up-on-reset":
        "stream.py _on_inbound_end: the dialer returns nil on a reset (UNAVAILABLE), so its "
        "retry loop stops",
    "accept-terminated-row":
        "server.py _check_open: a dial of a TERMINATED row is accepted (no secret to check)",
    "terminated-row-answers-terminated":
        "server.py _check_open: a dial of a TERMINATED row is answered with Terminated, then "
        "Aborted",
    # -- the row lifecycle: the RPCs (server.py), TerminateByID (stream.py), deletion (leader.py)
    "refuse:acceptor-none-generatetoken":
        "server.py generate_token: a token for a new peering is refused (FailedPrecondition)",
    "refuse:dialer-none-establish":
        "server.py establish: establishing a new peering is refused (FailedPrecondition)",
    "refuse:acceptor-pending-user-delete":
        "server.py peering_delete: deleting an active acceptor row is a successful no-op",
    "refuse:dialer-establishing-user-delete":
        "server.py peering_delete: deleting an active dialer row is a successful no-op",
    "refuse:acceptor-terminated-user-delete":
        "server.py peering_delete: deleting a TERMINATED acceptor row is a successful no-op",
    "refuse:dialer-terminated-user-delete":
        "server.py peering_delete: deleting a TERMINATED dialer row is a successful no-op",
    "refuse:acceptor-pending-terminated-received":
        "stream.py _on_terminated: an active acceptor row told Terminated is left as it is",
    "refuse:dialer-establishing-terminated-received":
        "stream.py _on_terminated: an active dialer row told Terminated is left as it is",
    "refuse:acceptor-deleting-deletion-routine-finished":
        "leader.py DeletionRoutine._remove_row: a row marked for deletion is never removed "
        "(its data is); a marked row keeps no role, so every marked row",
    "refuse:dialer-deleting-deletion-routine-finished":
        "leader.py DeletionRoutine._remove_row: a row marked for deletion is never removed "
        "(its data is); a marked row keeps no role, so every marked row",
    "deletion-removes-terminated":
        "leader.py DeletionRoutine: a TERMINATED row counts as work and is removed too",
    "terminate-marked-row":
        "stream.py _on_terminated: TerminateByID without a state check turns a row marked for "
        "deletion TERMINATED",
    # -- the leader's routines (impl/leader.py, server.py) and the store's import guard
    "sync-keeps-inactive":
        "leader.py SyncRoutine.sync_pass: inactive peerings go into the stored map, so their "
        "streams are never torn down",
    "sync-teardown-stored":
        "leader.py SyncRoutine.sync_pass: the pass tears down the connected streams it stored "
        "instead of the others",
    "sync-no-redial":
        "leader.py SyncRoutine.sync_pass: the pass never starts a dialer's retry loop",
    "import-when-inactive":
        "store/base.py _require_active: imported data is refused only when there is no row",
    "import-guard-inverted":
        "store/base.py _require_active: imported data is refused for an active row, accepted "
        "otherwise",
    "export-when-inactive":
        "stream.py _publish: a stream whose row is inactive keeps publishing export changes",
    "no-service-list":
        "stream.py _handle_unguarded: a new stream does not send the exported-service list",
    "service-list-ignored":
        "stream.py _import_op: the importer ignores the exported-service list",
    "no-trust-bundle":
        "stream.py _handle_unguarded: a new stream does not send the trust bundle",
    "failover-keeps-tracker":
        "server.py become_leader: a new term takes over the previous term's stream tracker",
    "deletion-row-first":
        "leader.py DeletionRoutine.remove_peering_and_data: the row goes first, then nodes "
        "and bundle",
    "deletion-row-before-bundle":
        "leader.py DeletionRoutine.remove_peering_and_data: nodes, then the row, then the "
        "bundle",
    "deletion-guard-inverted":
        "leader.py DeletionRoutine: the routine works on the active peerings instead of the "
        "inactive ones",
    "no-deletion-on-new-leader":
        "leader.py Leadership.run: a term after the first starts no deletion routine",
}

#: catalog name (killed by the checker) -> why the implementation does not make that mistake
NOT_PORTED: Final[Mapping[str, str]] = {
    "sync-list-before-snapshot":
        "no meaning here: the implementation's sync pass copies the connected streams and lists "
        "the peerings in one synchronous step (no checkpoint between them), so no stream can "
        "connect in between and the order cannot be observed; the model splits the pass in two "
        "(split_sync) to stand for Go's concurrency, which trio's single thread does not have",
    "dial-inactive":
        "no meaning here: a row marked for deletion keeps no addresses (peering_mark_deleted "
        "strips them), so a retry loop that re-reads its row has nothing to dial whatever its "
        "guard says; a TERMINATED row keeps them, but only Terminated makes one, and that ends "
        "the stream with a nil return, which stops the loop first",
    "deletion-without-routine":
        "not observable by conformance: the checker kills it by a ghost property (who writes: "
        "deletion-by-current-leader); a port (deletion writes by something other than the "
        "current term's routine) writes the same rows and data at the same points, and the "
        "abstraction compares what is written, not who wrote it (a deposed routine that runs "
        "on is the historical bug deletion-no-stop, which the zombie flag catches)",
}

def validate_mutants(names: object) -> frozenset[str]:
    """Check a collection of mutant names against IMPL_MUTANTS; ValueError names unknown ones."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"mutants must be a collection of mutant names, not "
                        f"{type(names).__name__}")
    chosen = frozenset(names)
    for name in chosen:
        if not isinstance(name, str):
            raise TypeError(f"mutant names are strings, got {name!r}")
    unknown = sorted(chosen - IMPL_MUTANTS.keys())
    if unknown:
        raise ValueError(f"unknown implementation mutant(s): {', '.join(unknown)}; "
                         "peerkit.impl.mutants.IMPL_MUTANTS lists them")
    return chosen

"""Named configurations: how many clusters, which services, and the budgets that bound a search.

The model's state space is finite because every operator action and every fault spends a budget
that the state carries; protocol steps are free. A configuration fixes the budgets and the world
the search starts from. The checker's own bounds (depth, states, time) are separate and normally
unset: the named configurations are small enough to be explored completely.

Import rules: standard library and ``peerkit.model`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace


@dataclass(frozen=True)
class Config:
    name: str
    clusters: int = 2
    #: services registered (with one instance each) in the exporting cluster at the start
    services: tuple[str, ...] = ("api", "web")
    #: the cluster that registers and exports `services` (to every other cluster)
    exporter: int = 0
    #: further clusters that register and export the same services (e.g. the dialer too)
    also_exporting: tuple[int, ...] = ()
    #: whether every cluster starts with the other clusters' names in its export entries
    exported_at_start: bool = True
    #: budgets (see `Budget` in state.py); with the established start, tokens and establishes
    #: beyond the set-up are for peering again after a deletion
    tokens: int = 0
    establishes: int = 0
    deletes: int = 1
    cleanups: int = 1
    churn: int = 0
    faults: int = 1
    failovers: int = 1
    #: where the search starts: "empty" (no peering yet) or "established" (the first cluster
    #: generated a token, the second established it, the stream is up and both sides have
    #: replicated; the acceptor's first sync pass since then is still due). The established
    #: start is itself reached by the model from the empty world (see PeeringModel.initial).
    start: str = "established"
    #: nodes deleted per deletion-routine batch (upstream: as many as fit in 256 KiB)
    batch: int = 1
    #: model the sync pass as two steps (connected-streams snapshot, then the peering list),
    #: so that other steps can happen in between, as upstream's comment on their order warns
    split_sync: bool = False
    #: model ACK/NACK replies as messages on the stream (they only update tracker statistics)
    acks: bool = False
    #: heartbeat timeouts as faults (a handler gives up on its own); they share the faults budget
    heartbeat_faults: bool = False
    #: failed store writes (raft applies) of handlers and the deletion routine as faults; they
    #: share the faults budget (finding F6)
    write_faults: bool = False
    #: a Python gRPC server may see a client's cancel first as end-of-stream (python-stack.md §3)
    python_server_eof_first: bool = True
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a configuration needs a non-empty name")
        ints = ("clusters", "tokens", "establishes", "deletes", "cleanups", "churn", "faults",
                "failovers",
                "batch", "exporter")
        for name in ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.clusters < 2:
            raise ValueError(f"peering needs at least 2 clusters, got {self.clusters}")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")
        if self.exporter >= self.clusters:
            raise ValueError(f"exporter {self.exporter} is not one of {self.clusters} clusters")
        if not isinstance(self.also_exporting, tuple) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < self.clusters
            for c in self.also_exporting
        ):
            raise ValueError(f"also_exporting must be a tuple of cluster indexes below "
                             f"{self.clusters}, got {self.also_exporting!r}")
        if not isinstance(self.services, tuple) or not all(
            isinstance(s, str) and s and s != "roots" for s in self.services
        ):
            raise ValueError(f"services must be a tuple of non-empty names, got {self.services!r}")
        if len(set(self.services)) != len(self.services):
            raise ValueError(f"services must be distinct, got {self.services!r}")
        if self.start not in ("empty", "established"):
            raise ValueError(f"start must be 'empty' or 'established', got {self.start!r}")
        for name in ("acks", "python_server_eof_first", "exported_at_start", "split_sync",
                     "heartbeat_faults", "write_faults"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool")

    def with_(self, **changes: object) -> Config:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown configuration field(s): {', '.join(unknown)}")
        return replace(self, **changes)  # type: ignore[arg-type]


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config(
            "default",
            description="2 clusters with an established peering replicating 2 services; "
            "budgets: 1 delete, 1 delete of a TERMINATED peering, 1 connection reset, "
            "1 leader failover",
        ),
        Config(
            "ci",
            faults=1,
            failovers=0,
            description="the default without the failover: quick enough for every test run; "
            "finds every bug except deletion-no-stop, which needs a failover",
        ),
        Config(
            "deep",
            start="empty",
            tokens=1,
            establishes=1,
            deletes=2,
            faults=1,
            failovers=0,
            split_sync=True,
            acks=True,
            heartbeat_faults=True,
            description="from no peering at all: token, establish, 2 deletes (both sides may "
            "delete at once), 1 reset or heartbeat timeout, the sync pass in two steps, "
            "ACK/NACK messages; a few million states",
        ),
        Config(
            "churn",
            services=("web",),
            churn=1,
            faults=1,
            failovers=0,
            description="the default without failover, with 1 service, plus one register, "
            "deregister, export or unexport while the peering runs",
        ),
        Config(
            "race",
            clusters=3,
            services=("web",),
            tokens=1,
            establishes=1,
            deletes=0,
            cleanups=0,
            faults=0,
            failovers=0,
            split_sync=True,
            description="3 clusters, dc1 and dc2 peered; dc1 may peer with dc3 too (1 token, 1 "
            "establish) while its sync pass runs in two steps: the race that taking the "
            "connected streams before listing the peerings prevents",
        ),
        Config(
            "dialer-exports",
            services=("web",),
            also_exporting=(1,),
            deletes=2,
            failovers=0,
            description="the dialer exports too: both sides replicate web to each other; 2 "
            "deletes (both sides may delete at once), 1 cleanup delete, 1 reset, no failover",
        ),
        Config(
            "repeer",
            services=("web",),
            tokens=1,
            establishes=1,
            failovers=0,
            description="peering again after a deletion: 1 more token and 1 more establish, 1 "
            "delete, 1 cleanup delete, 1 reset, no failover",
        ),
        Config(
            "apply-faults",
            services=("web",),
            churn=1,
            faults=1,
            failovers=0,
            write_faults=True,
            description="1 service, 1 delete, 1 cleanup, 1 churn action, no failover; the 1 "
            "fault may also be a failed store write (raft apply) of a handler or of the "
            "deletion routine (finding F6)",
        ),
        Config(
            "tiny",
            tokens=1,
            establishes=1,
            services=("web",),
            faults=0,
            failovers=0,
            deletes=1,
            start="empty",
            description="from no peering: 1 service, 1 delete, no faults; a few thousand "
            "states, for tests",
        ),
    )
}


#: The configurations CI model-checks on every change, cheapest first (`.ci/run`, and the mutant
#: test tries them in this order): together they reach every rule the mutation catalog changes.
CI_CONFIGS = ("race", "ci", "dialer-exports", "repeer", "churn", "default")


def get_config(name: str) -> Config:
    if not isinstance(name, str):
        raise TypeError(f"a configuration name is a string, not {type(name).__name__}")
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(
            f"unknown configuration {name!r}; known: {', '.join(sorted(CONFIGS))}"
        ) from None

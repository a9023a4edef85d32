"""Churn: many clients loop GenerateToken / Establish / Delete against two servers; what is left.

Run from the repository root with the project's venv:

    .venv/bin/python benchmarks/churn.py [--clients N] [--seconds S] [--settle S] [--json PATH]

Method (one process, real time, real gRPC on 127.0.0.1, SQLite stores in a temporary
directory, upstream's pacing): N client tasks each loop for S seconds: dc1 generates a token for
a fresh peer name, dc2 establishes it, the client waits 0, 0.05, 0.5 or 2 s (drawn from a
seeded generator), and one side (drawn) deletes the peering. No fault is injected. Then nothing
happens for ``--settle`` seconds and what is left is counted: rows by state on each side, RPC
errors by status code, and log records at WARNING or above (under churn most are expected: a
dial refused because its acceptor row is gone, a late Response refused for an inactive peering).
A side that was told keeps its TERMINATED row, as the protocol says. Each leftover is classified
against
finding F7 (specs/findings.md): a dc2 row deleted by dc2 before its first dial leaves dc1's row
PENDING; a dc1 row deleted and removed before dc2's first dial leaves dc2's row FAILING. Rows
in any other state, or leftovers of another shape, are counted apart: those would be bugs.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import count_warnings, two_servers
from machine_info import machine_info

from peerkit.impl.testing import Cluster
from peerkit.impl.transport import StreamFailed

DELAYS = (0.0, 0.05, 0.5, 2.0)


async def client(i: int, dc1: Cluster, dc2: Cluster, stop: float, rng: random.Random,
                 log: dict[str, dict[str, Any]]) -> None:
    n = 0
    while time.monotonic() < stop:
        name = f"c{i:02d}-{n:05d}"
        n += 1
        rec: dict[str, Any] = {"deleted_on": None}
        log[name] = rec
        try:
            token = await dc1.client.generate_token(name)
            await dc2.client.establish(name, token)
            await trio.sleep(rng.choice(DELAYS))
            side = rng.choice((dc1, dc2))
            await side.client.peering_delete(name)
            rec["deleted_on"] = side.name
        except StreamFailed as exc:
            rec["error"] = exc.code.name


async def run(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    log: dict[str, dict[str, Any]] = {}
    rng = random.Random(args.seed)
    async with two_servers(tmp) as (dc1, dc2):
        stop = time.monotonic() + args.seconds
        async with trio.open_nursery() as nursery:
            for i in range(args.clients):
                nursery.start_soon(client, i, dc1, dc2, stop,
                                   random.Random(rng.random()), log)
        await trio.sleep(args.settle)
        states = {c.name: collections.Counter(
            str(c.state(r.name).name if c.state(r.name) is not None else "?")
            for r in c.store.peering_list()) for c in (dc1, dc2)}
        f7_pending = f7_failing = other = 0
        for name, rec in log.items():
            r1 = dc1.state(name)
            r2 = dc2.state(name)
            left = (None if r1 is None else r1.name, None if r2 is None else r2.name)
            if left == (None, None) or "error" in rec:
                continue
            if rec["deleted_on"] == "dc2" and left == ("PENDING", None):
                f7_pending += 1
            elif rec["deleted_on"] == "dc1" and left == (None, "FAILING"):
                f7_failing += 1
            elif (rec["deleted_on"], left) in (("dc1", (None, "TERMINATED")),
                                               ("dc2", ("TERMINATED", None))):
                continue  # the expected end: the told side keeps its TERMINATED row
            else:
                other += 1
        errors = collections.Counter(r["error"] for r in log.values() if "error" in r)
    return {"iterations": len(log), "rpc_errors": dict(errors),
            "rows_by_state": {k: dict(v) for k, v in states.items()},
            "f7_pending_left": f7_pending, "f7_failing_left": f7_failing,
            "other_leftovers": other}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "churn.json")
    args = parser.parse_args()
    counter = count_warnings()
    with tempfile.TemporaryDirectory(prefix="peerkit-churn-") as tmp:
        result = trio.run(run, args, tmp)
    result |= {"clients": args.clients, "seconds": args.seconds, "settle": args.settle,
               "seed": args.seed, "log_warnings_or_worse": counter.count,
               "first_log_records": counter.first, "machine": machine_info()}
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

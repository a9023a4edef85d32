"""The SQLite store's import work alone (issue 10): ``StateStore.import_batch`` without gRPC.

1,000 imported services (one instance each: a node, a service, a service check and a node
check) go into a fresh ``SqliteStore`` in batches of 50 (what a stream end imports at a time:
runs of 40-64 Responses were seen in the 1,000-service stream benchmark), three times: new
rows, the same rows again (unchanged), then every service check changed. Reported per phase:
process CPU ms, wall ms and the SQLite statements run (counted with a trace callback).
Each round runs every interpreter once in a fresh process, alternating, so ``--compare-python``
(a venv of another checkout) is measured under the same load.

Run ``.venv/bin/python benchmarks/store_import.py [--rounds N] [--compare-python PY]
[--json PATH]``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SERVICES = 1_000
BATCH = 50
PHASES = (("new", "passing"), ("unchanged", "passing"), ("changed", "critical"))


def worker() -> dict[str, Any]:
    from peerkit.impl.store import Check, ImportService, Node, Peering, Service, SqliteStore

    def instance(i: int, status: str) -> tuple[Node, Service, list[Check]]:
        node, sid = f"node-{i}", f"svc-{i}"
        return (Node(name=node, address="10.0.0.1", peer_name="p"),
                Service(id=sid, name=sid, port=80, node=node, peer_name="p"),
                [Check(check_id=f"{sid}:health", service_id=sid, node=node, peer_name="p",
                       status=status),
                 Check(check_id="serfHealth", node=node, peer_name="p")])

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        store = SqliteStore(data_dir)
        try:
            store.peering_write(Peering(name="p"))
            statements = [0]
            store._backend._conn.set_trace_callback(  # type: ignore[attr-defined]
                lambda _sql: statements.__setitem__(0, statements[0] + 1))
            for label, status in PHASES:
                ops = [ImportService(f"svc-{i}", [instance(i, status)]) for i in range(SERVICES)]
                statements[0] = 0
                cpu, wall = time.process_time(), time.perf_counter()
                for start in range(0, SERVICES, BATCH):
                    store.import_batch("p", "default", ops[start:start + BATCH])
                out[label] = {"cpu_ms": 1000 * (time.process_time() - cpu),
                              "wall_ms": 1000 * (time.perf_counter() - wall),
                              "statements": statements[0]}
        finally:
            store.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare-python", default="")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker()))
        return 0
    pythons = {"this": sys.executable}
    if args.compare_python:
        pythons["before"] = args.compare_python
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in pythons}
    load_before = os.getloadavg()[0]
    for _round in range(args.rounds):
        for key, python in pythons.items():
            done = subprocess.run([python, __file__, "--worker"], check=True,
                                  capture_output=True, text=True)
            runs[key].append(json.loads(done.stdout))
    summary = {key: {label: {metric: statistics.median(r[label][metric] for r in rs)
                             for metric in ("cpu_ms", "wall_ms", "statements")}
                     for label, _status in PHASES}
               for key, rs in runs.items()}
    print(f"store import, {SERVICES:,} services in batches of {BATCH}, {args.rounds} rounds, "
          f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}; medians")
    for key, phases in summary.items():
        for label, m in phases.items():
            print(f"  {key:7} {label:10} cpu {m['cpu_ms']:7.1f} ms  wall {m['wall_ms']:7.1f} ms"
                  f"  statements {m['statements']:6.0f}")
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "store_import", "services": SERVICES, "batch": BATCH,
            "rounds": args.rounds, "pythons": pythons, "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0], "summary": summary, "runs": runs},
            indent=1) + "\n")
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

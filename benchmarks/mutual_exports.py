"""Mutual exports between two ``peerkit serve`` processes: K services each way against K one way.

Run from the repository root with the project's venv:

    .venv/bin/python benchmarks/mutual_exports.py [--services K] [--rounds R] [--json PATH]
        [--pinned]

Issue 10 asks that mutual exports of 3,000 services each way converge at the same rate as one
way. ``impl_speed.py``'s ``mutual`` cases run both servers in one process, on one trio thread,
so there the two directions compete for one core by construction; here each server is its own
process, as in a deployment, so the question is the servers' own: does importing while
exporting cost more per service than importing alone?

Method: for each round and each case (``one-way``, then ``both-ways``, alternating which goes
first from round to round so load drifts hit both alike), two fresh data directories are filled
before the servers start (straight into the SQLite store ``peerkit serve`` opens: K services
``svc-0000``..., one instance each on its own node with a service check, all exported to the
peer; in ``both-ways`` on both sides). Then two ``peerkit serve`` processes start on 127.0.0.1
(port 0), dc1 generates a token, and the clock starts as dc2 establishes with it. *Converge* is
the time until every importing side's ``PeeringRead`` reports ``ImportedServiceCount`` K (polled
every 20 ms, one small RPC per side). *Rate* is services imported in total (K or 2K) per second
of convergence. *Server CPU* is each process's user + system time (``/proc/PID/stat``) from just
before Establish to convergence. Nothing is asserted; a case that does not converge within
``--deadline`` seconds is reported with what was reached. With ``--pinned`` each round also runs
both cases with the servers started as ``peerkit serve --cpu 0`` and ``--cpu 1`` (each process on
a CPU of its own), in the same alternation, so pinned and unpinned are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import trio

from peerkit.impl.client import PeerkitClient
from peerkit.impl.store import SqliteStore
from peerkit.impl.transport.grpc_bridge import GrpcTransport

RESULTS = Path(__file__).resolve().parent / "results"
POLL = 0.02
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


@contextmanager
def servers(tmp: Path, pinned: bool) -> Iterator[tuple[list[str], list[int]]]:
    """``peerkit serve`` for dc1 and dc2 on their filled data dirs (with `pinned`, on CPU 0
    and CPU 1); (addresses, pids)."""
    with ExitStack() as stack:
        procs = []
        for cpu, name in enumerate(("dc1", "dc2")):
            log = stack.enter_context((tmp / f"{name}.log").open("w"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "peerkit", "serve", "--name", name, "--data-dir",
                 str(tmp / name), "--grpc-addr", "127.0.0.1:0", "--plaintext",
                 "--log-level", "warning", *(["--cpu", str(cpu)] if pinned else [])],
                stdout=subprocess.PIPE, stderr=log, text=True)
            stack.callback(stop, proc)
            procs.append(proc)
        addresses = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if " listening on " not in line:
                raise RuntimeError(f"a server did not start: {line!r}")
            addresses.append(line.split(" listening on ")[1].split()[0])
        yield addresses, [p.pid for p in procs]


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def fill(data_dir: Path, k: int, local: str, peer: str) -> None:
    # the same catalog as impl_speed's cases (benchmarks/ is not a package: import it by path)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from impl_speed import _register_exports

    store = SqliteStore(str(data_dir))
    try:
        _register_exports(store, k, local=local, peer=peer)
    finally:
        store.close()


def run_case(k: int, mutual: bool, deadline: float, pinned: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="peerkit-mutual-") as d:
        tmp = Path(d)
        for name in ("dc1", "dc2"):
            (tmp / name).mkdir()
        fill(tmp / "dc1", k, "dc1", "dc2")
        if mutual:
            fill(tmp / "dc2", k, "dc2", "dc1")
        with servers(tmp, pinned) as (addresses, pids):
            return {**trio.run(_converge, addresses, pids, k, mutual, deadline),
                    "pinned": pinned}


async def _converge(addresses: list[str], pids: list[int], k: int, mutual: bool,
                    deadline: float) -> dict[str, Any]:
    async with GrpcTransport() as transport, \
            PeerkitClient.connect(transport, addresses[0]) as dc1, \
            PeerkitClient.connect(transport, addresses[1]) as dc2:
        token = await dc1.generate_token("dc2")
        watched = [(dc2, "dc1")] + ([(dc1, "dc2")] if mutual else [])
        cpu0 = [cpu_seconds(p) for p in pids]
        start = time.perf_counter()
        await dc2.establish("dc1", token)
        counts = [0] * len(watched)
        done_at: list[float | None] = [None] * len(watched)
        while time.perf_counter() - start < deadline:
            for i, (client, peer) in enumerate(watched):
                if done_at[i] is None:
                    row = await client.peering_read(peer)
                    counts[i] = 0 if row is None else row.ImportedServiceCount
                    if counts[i] >= k:
                        done_at[i] = time.perf_counter() - start
            if all(t is not None for t in done_at):
                break
            await trio.sleep(POLL)
        cpu1 = [cpu_seconds(p) for p in pids]
    converged = all(t is not None for t in done_at)
    seconds = max(t for t in done_at if t is not None) if converged else None
    return {
        "services_each_way": k, "mutual": mutual, "converged": converged,
        "seconds": seconds, "imported": counts,
        "rate": (k * len(watched) / seconds) if seconds else None,
        "server_cpu_seconds": [round(b - a, 3) for a, b in zip(cpu0, cpu1, strict=True)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=600.0)
    parser.add_argument("--json", default=str(RESULTS / "mutual_exports.json"))
    parser.add_argument("--pinned", action="store_true",
                        help="also run every case with each server on a CPU of its own")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    pins = (False, True) if args.pinned else (False,)
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for mutual, pinned in [(m, p) for m in order
                               for p in (pins if r % 2 == 0 else pins[::-1])]:
            run = run_case(args.services, mutual, args.deadline, pinned)
            run["round"] = r
            run["load_average"] = os.getloadavg()
            runs.append(run)
            print(json.dumps(run), flush=True)
    summary = {}
    cases = [(label + ("-pinned" if pinned else ""), mutual, pinned)
             for label, mutual in (("one-way", False), ("both-ways", True)) for pinned in pins]
    for label, mutual, pinned in cases:
        mine = [x for x in runs
                if x["mutual"] is mutual and x["pinned"] is pinned and x["converged"]]
        if mine:
            summary[label] = {
                "median_seconds": statistics.median(x["seconds"] for x in mine),
                "median_rate": statistics.median(x["rate"] for x in mine),
                "median_server_cpu_seconds": [
                    statistics.median(x["server_cpu_seconds"][i] for x in mine) for i in (0, 1)],
                "converged_runs": len(mine),
            }
    out = {"machine": {"python": platform.python_version(), "cores": os.cpu_count(),
                       "platform": platform.platform()},
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "args": vars(args), "runs": runs, "summary": summary}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

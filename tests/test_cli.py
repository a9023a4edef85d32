"""The command line's contract: exit codes, the JSON report's keys, `peerkit bugs`, --trace-out,
and clear errors for bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peerkit.cli import main
from peerkit.model import BUGS


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_bugs_lists_one_bug_per_line_name_first() -> None:
    code, out, _ = run("bugs")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(BUGS)
    for line in lines:
        assert len(line.split(None, 1)[1]) > 20  # a description follows the name


def test_check_passes_with_exit_0_and_json_keys() -> None:
    code, out, _ = run("check", "--config", "ci", "--json", "--no-progress")
    assert code == 0
    report = json.loads(out)
    for key in ("config", "bugs", "distinct_states", "transitions", "depth", "seconds",
                "states_per_second", "properties"):
        assert key in report, key
    assert report["config"] == "ci" and report["bugs"] == []
    assert report["complete"] is True and report["ok"] is True
    assert all(p["verdict"] == "holds" for p in report["properties"])
    assert "counterexample" not in report


def test_check_with_a_bug_exits_1_with_a_counterexample(tmp_path: Path) -> None:
    trace = tmp_path / "trace.md"
    code, out, _ = run("check", "--bug", "termination-race", "--json", "--no-progress",
                       "--trace-out", str(trace))
    assert code == 1
    report = json.loads(out)
    assert report["bugs"] == ["termination-race"]
    assert report["violated_property"] == "settled-is-clean"
    steps = report["counterexample"]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert all("type" in s["action"] and s["description"] for s in steps)
    verdicts = {p["id"]: p["verdict"] for p in report["properties"]}
    assert verdicts["settled-is-clean"] == "violated"
    text = trace.read_text()
    assert "```mermaid" in text and "sequenceDiagram" in text and "participant dc1" in text


def test_text_report_numbers_the_steps_and_names_the_property() -> None:
    code, out, _ = run("check", "--bug", "dial-deleted", "--no-progress")
    assert code == 1
    assert "VIOLATED accept-only-when-active" in out
    assert "  1. " in out and "To replay it in Python" in out


def test_printed_replay_program_runs_and_shows_the_violation(tmp_path: Path) -> None:
    _, out, _ = run("check", "--bug", "dial-deleted", "--no-progress")
    program = out.split("To replay it in Python:\n\n", 1)[1].split("\n\n", 1)[0]
    source = "\n".join(line[4:] for line in program.splitlines())
    script = tmp_path / "replay.py"
    script.write_text(source)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          check=True)
    assert "no-export-when-inactive" in done.stdout


def test_raw_mermaid_when_the_file_ends_in_mmd(tmp_path: Path) -> None:
    trace = tmp_path / "t.mmd"
    run("check", "--bug", "stored-map", "--no-progress", "--trace-out", str(trace))
    assert trace.read_text().startswith("sequenceDiagram")


def test_a_cut_short_search_exits_3() -> None:
    code, out, _ = run("check", "--config", "ci", "--max-states", "50", "--no-progress")
    assert code == 3
    assert "??" in out


@pytest.mark.parametrize("argv", [
    ["check", "--bug", "no-such-bug"],
    ["check", "--config", "no-such-config"],
    ["check", "--max-states", "-4"],
    ["check", "--max-seconds", "zero"],
    ["check", "--workers", "0"],
    ["check", "--workers", "2", "--cluster", "tcp://127.0.0.1:8786"],
    ["frobnicate"],
])
def test_bad_input_is_a_usage_error(argv: list[str]) -> None:
    code, _, err = run(*argv)
    assert code == 2
    assert err  # argparse explains on stderr


def test_configs_and_properties_are_listed() -> None:
    code, out, _ = run("configs")
    assert code == 0 and out.splitlines()[0].startswith("default")
    code, out, _ = run("properties")
    assert code == 0 and "settles" in out and "no-orphans" in out


def test_console_script_is_installed(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "peerkit", "bugs"], capture_output=True,
                          text=True, check=True, cwd=tmp_path)
    assert done.stdout.split()[0] == "stored-map"


# ---------------------------------------------------------------------------------------------
# issue 8: exit codes through a closed pipe, early and clear errors, small fixes


@pytest.mark.parametrize(("argv", "expected"), [
    (["check", "--bug", "stored-map", "--no-progress"], 1),
    (["check", "--config", "ci", "--no-progress"], 0),
    (["bugs"], 0),
])
def test_a_closed_pipe_keeps_the_exit_code(argv: list[str], expected: int) -> None:
    """`peerkit check ... | head` with head gone before anything is written: the verdict's code
    stays (a violation used to become 0), and nothing is printed about the pipe."""
    proc = subprocess.Popen([sys.executable, "-m", "peerkit", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == expected
    assert b"BrokenPipe" not in err and b"Traceback" not in err


@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_trace_out_that_cannot_be_written_fails_before_the_search(
    tmp_path: Path, where: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "trace.md" if where == "under-a-file" else tmp_path
    code, out, err = run("check", "--bug", "termination-race", "--no-progress",
                         "--trace-out", str(target))
    assert code == 2
    assert out == ""  # no search ran, no report
    assert err.startswith(f"peerkit check: cannot write --trace-out {target}: ")
    assert len(err.strip().splitlines()) == 1


def test_trace_out_on_a_passing_run_says_so_and_writes_nothing(tmp_path: Path) -> None:
    trace = tmp_path / "new" / "trace.md"
    code, _, err = run("check", "--config", "ci", "--no-progress", "--trace-out", str(trace))
    assert code == 0
    assert f"no property was violated, so no trace was written to {trace}" in err
    assert not trace.exists() and not trace.parent.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "soon"])
def test_demo_timeout_must_be_finite_and_positive(value: str) -> None:
    code, out, err = run("demo", f"--timeout={value}")
    assert code == 2 and out == ""
    assert "--timeout" in err and "Traceback" not in err


def test_max_seconds_must_be_finite() -> None:
    code, _, err = run("check", "--max-seconds", "inf")
    assert code == 2 and "finite" in err


def test_serve_refuses_an_empty_data_dir(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "peerkit", "serve", "--name", "dc1",
                           "--data-dir", "", "--grpc-addr", "127.0.0.1:0", "--plaintext"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "peerkit serve: --data-dir must not be empty"
    assert list(tmp_path.iterdir()) == []  # nothing written to the current directory


@pytest.mark.parametrize("cpu", ["-1", "x", "1.5", "99999", ""])
def test_serve_refuses_a_cpu_it_cannot_run_on(tmp_path: Path, cpu: str) -> None:
    done = subprocess.run([sys.executable, "-m", "peerkit", "serve", "--name", "dc1",
                           "--data-dir", str(tmp_path / "d"), "--grpc-addr", "127.0.0.1:0",
                           "--plaintext", f"--cpu={cpu}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--cpu" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was opened


def test_pinning_to_a_cpu_pins_every_thread_and_the_threads_started_after() -> None:
    # in a child process: pinning is for the whole process and cannot be undone from inside
    code = (
        "import os, threading\n"
        "from peerkit.impl.serve import pin_to_cpu\n"
        "cpu = max(os.sched_getaffinity(0))\n"
        "early = threading.Event(); stop = threading.Event()\n"
        "def run():\n"
        "    early.set(); stop.wait()\n"
        "t = threading.Thread(target=run); t.start(); early.wait()\n"
        "assert pin_to_cpu(cpu) is None\n"
        "late = []\n"
        "t2 = threading.Thread(target=lambda: late.append(os.sched_getaffinity(0))); t2.start()\n"
        "t2.join()\n"
        "masks = {os.sched_getaffinity(int(tid)) == {cpu}\n"
        "         for tid in os.listdir('/proc/self/task')}\n"
        "stop.set(); t.join()\n"
        "assert masks == {True} and late == [{cpu}], (masks, late)\n"
        "print('pinned', cpu)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pinned")


def test_version() -> None:
    from peerkit import __version__

    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"peerkit {__version__}"


def test_one_step_is_singular(tmp_path: Path) -> None:
    trace = tmp_path / "t.md"
    code, out, _ = run("check", "--bug", "stored-map", "--no-progress", "--trace-out",
                       str(trace))
    assert code == 1
    assert "Counterexample: 1 step (a shortest one)" in out
    assert "and 1 transition to depth 1" in out
    assert "1 steps" not in out and "1 transitions" not in out
    assert ", 1 step." in trace.read_text()
    _, out, _ = run("check", "--bug", "no-reconnect", "--no-progress")
    assert "Counterexample: 3 steps" in out


def test_bound_options_have_help() -> None:
    code, out, _ = run("check", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "--max-states N stop after N distinct states" in text
    assert "--max-depth N explore no state more than N steps" in text
    assert "--max-seconds S stop after S seconds of search" in text


def test_serve_refuses_a_bad_name_before_touching_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = subprocess.run([sys.executable, "-m", "peerkit", "serve", "--name", "bad name",
                           "--data-dir", str(data), "--grpc-addr", "127.0.0.1:0",
                           "--plaintext"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("peerkit serve: --name: server name 'bad name' is not valid")
    assert "Traceback" not in done.stderr and not data.exists()


@pytest.mark.parametrize("address", ["dc1:0", "dc 1:8502", "300.1.1.1:8502"])
def test_serve_refuses_an_advertise_addr_a_peer_could_not_dial(
    address: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, _ = run("serve", "--name", "dc1", "--data-dir", str(tmp_path / "d"),
                     "--grpc-addr", "127.0.0.1:0", "--plaintext", "--advertise-addr", address)
    assert code == 2
    assert f"--advertise-addr {address!r}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_mutants_lists_the_catalog_and_check_runs_one() -> None:
    code, out, _ = run("mutants")
    assert code == 0
    assert "dialer-no-drain" in out and "equivalent" in out
    assert out.strip().splitlines()[-1].startswith(f"{len(out.strip().splitlines()) - 1} mutants")
    code, out, _ = run("check", "--config", "ci", "--mutant", "dialer-no-drain", "--no-progress")
    assert code == 1 and "--mutant dialer-no-drain" in out
    assert "VIOLATED settled-is-clean" in out and "mutant='dialer-no-drain'" in out
    code, _, err = run("check", "--mutant", "no-such-mutant")
    assert code == 2 and "unknown mutant" in err


def test_a_mutant_that_breaks_the_start_fails_with_one_line() -> None:
    code, out, err = run("check", "--config", "ci", "--mutant", "sync-no-redial")
    assert code == 1 and out == ""
    assert "the established start cannot be reached" in err and len(err.splitlines()) == 1


def test_check_fingerprints_reports_the_omission_probability() -> None:
    code, out, _ = run("check", "--config", "race", "--fingerprints", "--json", "--no-progress")
    assert code == 0
    report = json.loads(out)
    fp = report["fingerprints"]
    assert fp["bits"] == 64 and fp["function"] == "process_fingerprint"
    assert 0 < fp["omission_probability"] < 1e-9
    assert fp["collisions_detected"] == 0 and fp["bytes_per_state"] > 0
    exact = json.loads(run("check", "--config", "race", "--json", "--no-progress")[1])
    assert exact["fingerprints"] is None
    assert (report["distinct_states"], report["transitions"]) == (
        exact["distinct_states"], exact["transitions"])
    code, text, _ = run("check", "--config", "race", "--fingerprints", "--no-progress")
    assert code == 0
    assert "probability that a collision omitted a state" in text


def test_check_with_workers_reports_what_one_process_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from peerkit.checker import parallel

    pools: list[int] = []
    real_pool = parallel.ProcessPool

    def spy(factory: Any, workers: int) -> Any:
        pools.append(workers)
        return real_pool(factory, workers)

    monkeypatch.setattr(parallel, "ProcessPool", spy)

    def report(workers: str) -> dict[str, object]:
        code, out, _ = run("check", "--config", "ci", "--bug", "no-reconnect", "--all",
                           "--json", "--no-progress", "--workers", workers)
        assert code == 1
        data = json.loads(out)
        del data["seconds"], data["states_per_second"]
        return data

    one = report("1")
    assert pools == []  # one process: the engine itself
    assert one == report("2")
    assert pools == [2]
    assert not one["ok"] and one["complete"]


def test_check_on_a_cluster_without_dask_says_how_to_get_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    code, _, err = run("check", "--config", "race", "--no-progress", "--cluster",
                       "tcp://127.0.0.1:8786")
    assert code == 2
    assert 'pip install "peerkit[distributed]"' in err


def test_a_bad_peerkit_workers_setting_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERKIT_WORKERS", "zero")
    code, _, err = run("check", "--config", "race", "--no-progress")
    assert code == 2
    assert "PEERKIT_WORKERS" in err


def test_fingerprints_do_not_combine_with_several_workers() -> None:
    for where in (["--workers", "2"], ["--cluster", "tcp://127.0.0.1:8786"]):
        code, _, err = run("check", "--config", "race", "--fingerprints", "--no-progress", *where)
        assert code == 2
        assert "--fingerprints searches in one process" in err and len(err.splitlines()) == 1

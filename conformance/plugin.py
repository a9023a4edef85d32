"""The pytest plugin: ``pytest --peerkit-target=ADDR_A,ADDR_B`` runs the conformance suite
against two running servers.

One job: declare the option and the ``peerkit_target`` fixture (and ``peerkit_hooks``, which
skips a scenario that needs the optional test hooks when a server lacks them, and a line in the
terminal summary that says so), and when the option is given,
add the suite (``peerkit.conformance.target_suite``) to what pytest collects: it is then the
whole run when no paths were named on the command line, and runs beside them when some were.
Without the option the plugin adds nothing to collect and imports nothing beyond pytest and the
standard library, so an ordinary test run is neither changed nor slowed.

Installed as the ``pytest11`` entry point ``peerkit`` (pyproject.toml), so it is active wherever
peerkit is installed; ``-p no:peerkit`` switches it off.

May import: the standard library, pytest, and this package's ``remote`` (lazily, inside the
fixture: the suite and gRPC load only when the option is given).
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .remote import Target

OPTION = "--peerkit-target"
#: why the target's test hooks cannot be used (None: they can), for the terminal summary
HOOKS_KEY = pytest.StashKey[str | None]()
SUITE = "peerkit.conformance.target_suite"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("peerkit", "peerkit conformance suite against running servers")
    group.addoption(
        OPTION, dest="peerkit_target", default=None, metavar="ADDR_A,ADDR_B",
        help="run peerkit's conformance suite against two running servers (host:port each; "
             "the first generates tokens and exports, the second establishes and dials)")
    group.addoption(
        "--peerkit-rest", dest="peerkit_rest", type=float, default=None, metavar="SECONDS",
        help="how long both servers' state must stay unchanged to be observed (default 0.3)")
    group.addoption(
        "--peerkit-settle", dest="peerkit_settle", type=float, default=None, metavar="SECONDS",
        help="how long the servers get to settle at the end of a scenario (default 20)")


def parse_target(value: str) -> tuple[str, str]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise pytest.UsageError(
            f"{OPTION} takes two different addresses, ADDR_A,ADDR_B; got {value!r}")
    for p in parts:
        host, sep, port = p.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise pytest.UsageError(f"{OPTION}: {p!r} is not host:port")
    return parts[0], parts[1]


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("peerkit_target")
    if value is None:
        return
    parse_target(value)
    for name, flag in (("peerkit_rest", "--peerkit-rest"), ("peerkit_settle", "--peerkit-settle")):
        seconds = config.getoption(name)
        if seconds is not None and not 0 < seconds <= 3600:
            raise pytest.UsageError(f"{flag} takes seconds in (0, 3600]; got {seconds}")
    spec = importlib.util.find_spec(SUITE)
    if spec is None or spec.origin is None:
        raise pytest.UsageError(f"{OPTION}: cannot find the suite module {SUITE}")
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        if spec.origin not in config.args:
            config.args.append(spec.origin)
    else:  # no paths named: the suite is the run
        config.args[:] = [spec.origin]


@pytest.fixture(scope="session")
def peerkit_target(pytestconfig: pytest.Config) -> Target:
    """The two servers given by ``--peerkit-target``, with the suite's timing; skips without
    the option."""
    value = pytestconfig.getoption("peerkit_target")
    if value is None:
        pytest.skip(f"no {OPTION} given")
    from .remote import Target, Timing, hooks_problem, unreachable  # only now: gRPC, trio

    timing = Timing()
    rest, settle = (pytestconfig.getoption(n) for n in ("peerkit_rest", "peerkit_settle"))
    if rest is not None:
        timing = replace(timing, rest=rest)
    if settle is not None:
        timing = replace(timing, settle_deadline=settle)
    target = Target(parse_target(value), timing)
    problem = unreachable(target)
    if problem is not None:
        pytest.fail(f"{OPTION}: {problem}", pytrace=False)
    target = replace(target, hooks=hooks_problem(target))
    pytestconfig.stash[HOOKS_KEY] = target.hooks
    return target


@pytest.fixture
def peerkit_hooks(peerkit_target: Target) -> Target:
    """The target, for a scenario that needs the optional test hooks (``TestHookService``;
    probed with ResetStream); skips the scenario, saying why, when a server lacks them."""
    if peerkit_target.hooks is not None:
        pytest.skip(f"needs the optional test hooks: {peerkit_target.hooks}")
    return peerkit_target


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    """Say once, at the end, when scenarios were skipped for want of test hooks."""
    problem = config.stash.get(HOOKS_KEY, None)
    if problem is None:
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if "needs the optional test hooks" in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(
            f"peerkit: {len(skipped)} scenario(s) skipped: {problem}; start the servers with "
            "their test hooks on (peerkit serve --test-hooks) to run them", yellow=True)

"""Run CPython's own kqueue selector and asyncio tests, unmodified, against skqueue.

    python tests/cpython_kqueue_suite.py [--json OUT] [--timeout S] [--reference] GROUP...
    python tests/cpython_kqueue_suite.py --only TEST_ID... [--reference]

CPython defines its kqueue test classes (``KqueueSelectorTestCase``, ``KqueueEventLoopTests``)
only where ``select.kqueue`` exists.  Before importing the installed interpreter's ``test``
package, this script makes this process look like BSD: ``skqueue.compat``'s kqueue, kevent
and ``KQ_*`` constants go into ``select``, and ``skqueue.selectors.KqueueSelector`` becomes
``selectors.KqueueSelector`` and ``selectors.DefaultSelector`` (so the subprocess tests,
which take the policy's default loop, run on it too).  It is meant to run in a process of
its own: nothing is undone.

``--reference`` runs the matching tests with the real ``select`` module instead (the epoll
classes; the subprocess tests on the stock default selector), to tell a skip CPython makes
on Linux anyway from one that only the kqueue run makes.  With ``--only``, it takes the
kqueue tests' ids and the JSON's ``reference_of`` maps each to the id that ran.

Each test gets ``--timeout`` seconds: a test still running then is interrupted by a signal
(it counts as an error, with the traceback of where it hung) and the run goes on.  The
outcome of every test goes to ``--json`` (``{"counts": {...}, "tests": {id: [outcome,
detail, seconds]}}``, outcome one of ok, failure, error, skip, xfail, xpass); the unittest
log goes to stderr.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import signal
import sys
import threading
import time
import traceback
import unittest
from typing import Any

# group -> (module, kqueue class or None for the whole module, reference class)
GROUPS: dict[str, tuple[str, str | None, str | None]] = {
    "selectors": ("test.test_selectors", "KqueueSelectorTestCase", "EpollSelectorTestCase"),
    "events": ("test.test_asyncio.test_events", "KqueueEventLoopTests", "EPollEventLoopTests"),
    "sendfile": ("test.test_asyncio.test_sendfile", "KqueueEventLoopTests", "EPollEventLoopTests"),
    "sock_lowlevel": (
        "test.test_asyncio.test_sock_lowlevel",
        "KqueueEventLoopTests",
        "EPollEventLoopTests",
    ),
    # Every Unix class here takes the policy's loop, whose selector is DefaultSelector.
    "subprocess": ("test.test_asyncio.test_subprocess", None, None),
}

_TIMEOUT_SIGNAL = signal.SIGRTMIN + 7  # used by no CPython test


def reference_id(test_id: str) -> str:
    """The id of the same test with the real select module (the epoll class)."""
    for module, kq_cls, ref_cls in GROUPS.values():
        if kq_cls and ref_cls and test_id.startswith(f"{module}.{kq_cls}."):
            return f"{module}.{ref_cls}." + test_id[len(module) + len(kq_cls) + 2 :]
    return test_id


def install_skqueue() -> None:
    """Make ``select`` and ``selectors`` look as they do on BSD, backed by skqueue."""
    import select
    import selectors

    from skqueue import compat
    from skqueue.selectors import KqueueSelector

    for name in compat.__all__:
        setattr(select, name, getattr(compat, name))
    setattr(selectors, "KqueueSelector", KqueueSelector)  # noqa: B010 - not there on Linux
    setattr(selectors, "DefaultSelector", KqueueSelector)  # noqa: B010


def _format(err: Any) -> str:
    return "".join(traceback.format_exception(*err))


class _TestTimeout(Exception):
    """Raised in the main thread when a test outlives its time."""


class _Result(unittest.TextTestResult):
    """Records every outcome and arms a per-test watchdog."""

    outcomes: dict[str, tuple[str, str, float]]
    per_test_timeout: float = 300.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes = {}
        self._timer: threading.Timer | None = None
        self._started = 0.0

    def _note(self, test: Any, outcome: str, detail: str = "") -> None:
        tid = test.id()
        if tid not in self.outcomes or outcome != "ok":  # a subtest failure wins
            self.outcomes[tid] = (outcome, detail, round(time.monotonic() - self._started, 3))

    def startTest(self, test: Any) -> None:  # noqa: N802 - unittest's name
        main = threading.main_thread().ident
        assert main is not None
        self._timer = threading.Timer(
            self.per_test_timeout, signal.pthread_kill, (main, _TIMEOUT_SIGNAL)
        )
        self._timer.daemon = True
        self._timer.start()
        # Backstop: a hang the signal cannot break ends the process with every stack.
        faulthandler.dump_traceback_later(self.per_test_timeout * 2 + 30, exit=True)
        self._started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test: Any) -> None:  # noqa: N802
        if self._timer is not None:
            self._timer.cancel()
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)

    def addSuccess(self, test: Any) -> None:  # noqa: N802
        self._note(test, "ok")
        super().addSuccess(test)

    def addError(self, test: Any, err: Any) -> None:  # noqa: N802
        self._note(test, "error", _format(err))
        super().addError(test, err)

    def addFailure(self, test: Any, err: Any) -> None:  # noqa: N802
        self._note(test, "failure", _format(err))
        super().addFailure(test, err)

    def addSkip(self, test: Any, reason: str) -> None:  # noqa: N802
        self._note(test, "skip", reason)
        super().addSkip(test, reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:  # noqa: N802
        self._note(test, "xfail")
        super().addExpectedFailure(test, err)

    def addUnexpectedSuccess(self, test: Any) -> None:  # noqa: N802
        self._note(test, "xpass")
        super().addUnexpectedSuccess(test)

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:  # noqa: N802
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._note(test, "failure" if failed else "error", _format(err))
        super().addSubTest(test, subtest, err)


def _on_timeout(signum: int, frame: Any) -> None:
    raise _TestTimeout("the test outlived the per-test timeout (hung?)")


def load(groups: list[str], only: list[str], reference: bool) -> unittest.TestSuite:
    loader = unittest.TestLoader()
    if only:
        return loader.loadTestsFromNames([reference_id(t) for t in only] if reference else only)
    names = []
    for g in groups:
        module, kq_cls, ref_cls = GROUPS[g]
        cls = ref_cls if reference else kq_cls
        names.append(f"{module}.{cls}" if cls else module)
    return loader.loadTestsFromNames(names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("groups", nargs="*", metavar="GROUP", help=" | ".join(GROUPS))
    ap.add_argument("--only", nargs="+", default=[], metavar="TEST_ID")
    ap.add_argument("--reference", action="store_true", help="use the real select module")
    ap.add_argument("--json", metavar="OUT", help="write every outcome here")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per test")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per test")
    args = ap.parse_args(argv)
    if not args.groups and not args.only:
        ap.error("give at least one GROUP or --only")
    for g in args.groups:
        if g not in GROUPS:
            ap.error(f"unknown group {g!r}: choose from {', '.join(GROUPS)}")
    if not args.reference:
        install_skqueue()
    from skqueue._accel import speedups

    signal.signal(_TIMEOUT_SIGNAL, _on_timeout)
    _Result.per_test_timeout = args.timeout
    suite = load(args.groups, args.only, args.reference)
    runner = unittest.TextTestRunner(
        stream=sys.stderr, verbosity=2 if args.verbose else 1, resultclass=_Result
    )
    t0 = time.monotonic()
    result = runner.run(suite)
    assert isinstance(result, _Result)
    counts: dict[str, int] = {}
    for outcome, _, _ in result.outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    report = {
        "python": sys.version.split()[0],
        "mode": "reference" if args.reference else "C" if speedups is not None else "pure",
        "reference": args.reference,
        "seconds": round(time.monotonic() - t0, 1),
        "counts": counts,
        "reference_of": {t: reference_id(t) for t in args.only} if args.reference else {},
        "tests": result.outcomes,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())

"""CPython's own kqueue selector and asyncio tests, unmodified, on skqueue (issue 11).

``cpython_kqueue_suite.py`` (next to this file) runs, from the installed interpreter's
``test`` package, ``test_selectors.KqueueSelectorTestCase``, the ``KqueueEventLoopTests`` of
``test_asyncio.test_events``, ``test_sendfile`` and ``test_sock_lowlevel``, and
``test_asyncio.test_subprocess``, in a subprocess whose ``select``/``selectors`` modules
look as they do on BSD (skqueue's kqueue and ``skqueue.selectors.KqueueSelector``).  Each
(mode, chunk) pair is one subprocess; all of them start together, so the two cores work
on them at once, and each test below waits for its own.

A test passes when its run has no failure and no error, and every skip is one CPython
makes anyway: the same test skips for the same reason with the real ``select`` module
(its epoll class), or it is in ``KQUEUE_SKIPS``, the skips CPython's test code itself
decides for a kqueue selector on every platform.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SUITE = Path(__file__).with_name("cpython_kqueue_suite.py")
MODES = {"C": {}, "pure": {"SKQUEUE_PURE": "1"}}
CHUNKS = {
    "sockets": ["selectors", "events", "sendfile", "sock_lowlevel"],
    "subprocess": ["subprocess"],
}
PER_TEST_TIMEOUT = 60  # seconds; a test still running then counts as an error (a hang)
RUN_TIMEOUT = 600  # the whole chunk

# Skips that CPython's test code decides from the selector class, on BSD as here.
KQUEUE_SKIPS = {
    # mocks the _selector_cls of the epoll/poll/devpoll selectors; no such hook for kqueue
    "test.test_selectors.KqueueSelectorTestCase.test_modify_unregister": "",
}


class _Run:
    """One suite subprocess, started at once and waited for on first use."""

    def __init__(self, args: list[str], env_extra: dict[str, str], workdir: Path) -> None:
        self.out = workdir / "result.json"
        self.log = workdir / "log.txt"
        env = dict(os.environ, **env_extra)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(SUITE), *args, "--json", str(self.out)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def result(self) -> dict[str, Any]:
        try:
            self.proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.out.exists():
            tail = self.log.read_text(errors="replace")[-6000:]
            pytest.fail(f"the suite ended (exit {self.proc.returncode}) without a result:\n{tail}")
        report: dict[str, Any] = json.loads(self.out.read_text())
        return report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], _Run]]:
    started = {}
    try:
        for mode, env in MODES.items():
            for chunk, groups in CHUNKS.items():
                workdir = tmp_path_factory.mktemp(f"cpython-{mode}-{chunk}")
                args = [*groups, "--timeout", str(PER_TEST_TIMEOUT)]
                started[mode, chunk] = _Run(args, env, workdir)
        yield started
    finally:
        for run in started.values():
            run.kill()


def _reference_outcomes(ids: list[str], workdir: Path) -> dict[str, tuple[str, str]]:
    """Outcome and detail of each kqueue test's counterpart with the real select module."""
    run = _Run(["--reference", "--only", *ids, "--timeout", str(PER_TEST_TIMEOUT)], {}, workdir)
    report = run.result()
    tests = report["tests"]
    return {
        tid: (tests[ref][0], tests[ref][1]) if ref in tests else ("missing", "")
        for tid, ref in report["reference_of"].items()
    }


def _short(detail: str) -> str:
    lines = detail.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.timeout(RUN_TIMEOUT + 120)
@pytest.mark.parametrize("chunk", list(CHUNKS))
@pytest.mark.parametrize("mode", list(MODES))
def test_cpython_kqueue_tests(
    runs: dict[tuple[str, str], _Run],
    mode: str,
    chunk: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = runs[mode, chunk].result()
    if mode == "C" and report["mode"] != "C":
        pytest.skip("the C helper is not built")
    tests = report["tests"]
    assert tests, "no test ran"
    counts = report["counts"]
    bad = {tid: t for tid, t in tests.items() if t[0] in ("failure", "error", "xpass")}
    skipped = {tid: t[1] for tid, t in tests.items() if t[0] == "skip"}

    unexplained = {}
    to_compare = [tid for tid in skipped if tid not in KQUEUE_SKIPS]
    if to_compare:
        ref = _reference_outcomes(to_compare, tmp_path)
        for tid in to_compare:
            got = ref[tid]
            if got != ("skip", skipped[tid]):
                unexplained[tid] = f"skipped here ({skipped[tid]!r}), {got[0]} with epoll"
    for tid, reason in KQUEUE_SKIPS.items():
        if tid in skipped and skipped[tid] != reason:
            unexplained[tid] = f"skipped for another reason: {skipped[tid]!r}"

    with capsys.disabled():
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        print(
            f"\nCPython {report['python']} kqueue tests [{mode}, {chunk}]: {summary} "
            f"in {report['seconds']} s"
        )
    if bad:
        pytest.fail(
            "CPython tests failed on skqueue:\n"
            + "\n".join(f"{t[0]}: {tid}: {_short(t[1])}" for tid, t in sorted(bad.items()))
        )
    if unexplained:
        pytest.fail(
            "skips CPython does not make:\n"
            + "\n".join(f"{tid}: {why}" for tid, why in sorted(unexplained.items()))
        )

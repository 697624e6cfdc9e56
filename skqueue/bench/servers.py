"""Servers under test, each in its own subprocess: ``skq serve``, asyncio/uvloop, memcached.

Why subprocesses
----------------
The benchmark harness and the load generator are Python too.  A server run as threads of
the harness would share the harness's GIL, and every measurement would include the harness's
own bookkeeping; so every server runs in a child process, started here, waited for until it
answers, and stopped when its load points are done.  The load generator
(:func:`skqueue.load.generator.run_load`) itself runs in further processes.

Kinds of server
---------------
A :class:`ServerSpec` names what to start.  ``policy`` decides the kind:

* an SKQ policy label (``rand``, ``best2_ws``, ``cpu2_ws`` ...), ``vanilla`` or ``legacy``:
  ``python -m skqueue serve ... --ready-file PATH`` (the project's worker-pool server); it
  writes its bound address into the ready file and exits 0 on SIGTERM;
* ``asyncio`` / ``uvloop``: ``python -m skqueue.server.aio`` (one event loop in one thread, the
  same sans-I/O sessions), which prints ``LISTENING <host> <port>`` and exits 0 on SIGTERM;
* ``memcached``: the real memcached binary (memcached protocol only), on a port chosen here,
  ``-l 127.0.0.1 -t N -U 0``; it is ready when it answers ``version``.

Readiness is "the address is known *and* a probe request got a correct reply" (an ECHO frame
for the RPC protocol, ``version`` for memcached), so a server that binds but cannot serve is
reported at start, not as a run full of errors.  Stopping sends SIGTERM (never SIGINT, which
a child of a background job inherits ignored), waits, then kills.  stdout/stderr go to files
in a private temporary directory (never to pipes that could fill up and stall the server);
their tail is attached to start-up errors and to a non-zero exit.

Affinity: ``ServerSpec.cpus`` pins the child (all its threads inherit it) with
``sched_setaffinity`` between fork and exec.

CPU time: :meth:`ServerProcess.cpu_s` reads the child's user + system time from
``/proc/PID/stat`` (all its threads, exited ones included), so the harness can price a load
point in server CPU per request for every kind of server, the real memcached too.  The
kernel counts it in clock ticks (10 ms at the usual 100 Hz).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skqueue import rpcwire

__all__ = [
    "AIO_KINDS",
    "BASELINES",
    "SERVICE_MODES",
    "ServerError",
    "ServerProcess",
    "ServerSpec",
    "ServerUnavailable",
    "free_port",
    "parse_address",
    "probe",
    "process_cpu_s",
    "server_kind",
]

AIO_KINDS = ("asyncio", "uvloop")
BASELINES = ("asyncio", "uvloop", "memcached")

#: What each server-side service-time mode stands for (printed with every result).
SERVICE_MODES: dict[str, str] = {
    "sleep": "time.sleep: the GIL is released, standing for I/O (a backend call)",
    "hash": "sha256 over 2 KiB blocks: GIL-releasing compute",
    "spin": "pure-Python busy loop: holds the GIL (CPU-bound Python handler)",
}


class ServerError(RuntimeError):
    """A server failed to start, to answer its probe, or died."""


class ServerUnavailable(ServerError):
    """A server cannot be run here at all (binary or module missing, wrong protocol)."""


def server_kind(policy: str) -> str:
    """``"asyncio"``, ``"uvloop"``, ``"memcached"``, or ``"skq"`` for every other label."""
    return policy if policy in BASELINES else "skq"


@dataclass(frozen=True)
class ServerSpec:
    """What to start: a policy label or baseline, the protocol and the server's options."""

    policy: str
    proto: str = "rpc"
    threads: int = 4
    service: str = "sleep"
    host: str = "127.0.0.1"
    name: str = ""
    rt_hosts: tuple[str, ...] = ()
    rtshare: int | None = None
    tfreq: int | None = None
    cpus: tuple[int, ...] | None = None
    extra_args: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """The name shown in tables (``name`` if given, else the policy)."""
        return self.name or self.policy

    @property
    def kind(self) -> str:
        """See :func:`server_kind`."""
        return server_kind(self.policy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""
        return {
            "label": self.label,
            "policy": self.policy,
            "kind": self.kind,
            "proto": self.proto,
            "threads": self.threads,
            "service": self.service if self.proto == "rpc" else None,
            "host": self.host,
            "rt_hosts": list(self.rt_hosts),
            "rtshare": self.rtshare,
            "tfreq": self.tfreq,
            "cpus": list(self.cpus) if self.cpus is not None else None,
            "extra_args": list(self.extra_args),
        }

    def check(self) -> None:
        """Raise :class:`ServerUnavailable` when this server cannot run on this machine."""
        if self.proto not in ("rpc", "memcached"):
            raise ServerUnavailable(f"unknown protocol {self.proto!r}")
        kind = self.kind
        if kind == "memcached":
            if self.proto != "memcached":
                raise ServerUnavailable("the real memcached speaks only the memcached protocol")
            if shutil.which("memcached") is None:
                raise ServerUnavailable("memcached binary not found (apt-get install memcached)")
        elif kind == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ServerUnavailable("uvloop is not installed (pip install uvloop)")
        if kind in AIO_KINDS and (self.rt_hosts or self.tfreq or self.rtshare):
            raise ServerUnavailable(f"{kind} has no realtime class (rt-hosts/tfreq/rtshare)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for servers that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


_LISTENING = re.compile(r"LISTENING\s+(\S+)\s+(\d+)")
_HOST_SPACE_PORT = re.compile(r"^\s*(\S+)\s+(\d{1,5})\s*$")


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int] | None:
    """Find ``(host, port)`` in a server's announcement; ``None`` if there is none yet.

    Accepts JSON (``{"host":..,"port":..}`` or ``{"address": [host, port]}``),
    ``LISTENING host port``, ``host:port``, ``host port``, or a bare port number.
    """
    text = text.strip()
    if not text:
        return None
    first = text.splitlines()[0].strip()
    with contextlib.suppress(ValueError):
        obj = json.loads(first)
        if isinstance(obj, dict):
            if "port" in obj:
                return str(obj.get("host") or default_host), int(obj["port"])
            addr = obj.get("address")
            if isinstance(addr, list | tuple) and len(addr) >= 2:
                return str(addr[0] or default_host), int(addr[1])
        elif isinstance(obj, list) and len(obj) >= 2:
            return str(obj[0] or default_host), int(obj[1])
        elif isinstance(obj, int):
            return default_host, obj
    found: tuple[str, str] | None = None
    m = _LISTENING.search(first) or _HOST_SPACE_PORT.search(first)
    if m:
        found = (m.group(1), m.group(2))
    else:
        host, sep, port = first.rpartition(":")
        if sep and port.isdigit() and host and " " not in host:
            found = (host.strip("[]"), port)
        elif first.isdigit():
            found = ("", first)
    if found is None or not 0 < int(found[1]) < 65536:
        return None
    host = found[0]
    if host in ("0.0.0.0", "::", ""):
        host = default_host
    return host, int(found[1])


def probe(proto: str, address: tuple[str, int], timeout: float = 2.0, requests: int = 3) -> None:
    """Send ``requests`` trivial requests and check the replies; raise :class:`ServerError`."""
    try:
        with socket.create_connection(address, timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(requests):
                if proto == "memcached":
                    s.sendall(b"version\r\n")
                    line = _read_until(s, b"\r\n", timeout)
                    if not line.startswith(b"VERSION"):
                        raise ServerError(f"bad memcached probe reply {line[:60]!r}")
                else:
                    payload = b"probe%d" % i
                    s.sendall(rpcwire.encode(rpcwire.OP_ECHO, 0, payload))
                    parser = rpcwire.FrameParser()
                    frames: list[tuple[int, int, bytes]] = []
                    deadline = time.monotonic() + timeout
                    while not frames:
                        if time.monotonic() > deadline:
                            raise ServerError("probe: no reply")
                        chunk = s.recv(65536)
                        if not chunk:
                            raise ServerError("probe: connection closed")
                        frames = parser.feed(chunk)
                    status, _arg, body = frames[0]
                    if status != rpcwire.ST_OK or body != payload:
                        raise ServerError(f"bad ECHO probe reply: status {status}, {body[:40]!r}")
    except OSError as exc:
        raise ServerError(f"probe of {address[0]}:{address[1]} failed: {exc}") from exc


def _read_until(s: socket.socket, sep: bytes, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while sep not in buf:
        if time.monotonic() > deadline:
            raise ServerError("probe: no reply")
        chunk = s.recv(4096)
        if not chunk:
            raise ServerError("probe: connection closed")
        buf += chunk
    return buf


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far, threads included, from
    ``/proc/PID/stat``; ``None`` when it cannot be read (no such process, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after
    # its last ")"; utime and stime are fields 14 and 15, the 12th and 13th after comm
    rest = stat[stat.rindex(b")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def _package_root() -> str:
    """The directory holding the ``skqueue`` package (put on the child's PYTHONPATH)."""
    import skqueue

    return str(Path(skqueue.__file__).resolve().parent.parent)


class ServerProcess:
    """One server subprocess: ``with ServerProcess(spec) as srv: srv.address``.

    ``start()`` returns the address once the server answered a probe (or raises
    :class:`ServerError`); ``stop()`` ends it politely, then by force, and returns its exit
    code.  ``python`` is the interpreter used for Python servers (default: this one).
    """

    def __init__(
        self,
        spec: ServerSpec,
        *,
        startup_timeout: float = 20.0,
        # More than the skq server's own join limit (ServerConfig.stop_timeout, 5 s) plus its
        # teardown, so a server that uses its whole limit exits by itself, with its log.
        stop_timeout: float = 15.0,
        python: str | None = None,
    ) -> None:
        self.spec = spec
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.python = python or sys.executable
        self.address: tuple[str, int] | None = None
        self.returncode: int | None = None
        self.command: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._port: int | None = None
        self._log_cache = ""

    # ------------------------------------------------------------------ commands
    def _paths(self) -> tuple[Path, Path, Path]:
        assert self._tmp is not None
        d = Path(self._tmp.name)
        return d / "ready", d / "stdout", d / "stderr"

    def build_command(self, ready_file: Path) -> list[str]:
        """The argv that starts this server."""
        sp = self.spec
        kind = sp.kind
        if kind == "memcached":
            if self._port is None:
                self._port = free_port(sp.host)
            cmd = [
                "memcached",
                "-p",
                str(self._port),
                "-l",
                sp.host,
                "-t",
                str(sp.threads),
                "-U",
                "0",
            ]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                cmd += ["-u", "root"]  # memcached refuses to run as root without -u
            return cmd + list(sp.extra_args)
        if kind in AIO_KINDS:
            cmd = [self.python, "-m", "skqueue.server.aio", "--proto", sp.proto, "--loop", kind]
            cmd += ["--host", sp.host, "--port", "0"]
            if sp.proto == "rpc":
                cmd += ["--service", sp.service]
            return cmd + list(sp.extra_args)
        cmd = [self.python, "-m", "skqueue", "serve", "--proto", sp.proto]
        cmd += ["--host", sp.host, "--port", "0", "--threads", str(sp.threads)]
        cmd += ["--policy", sp.policy, "--ready-file", str(ready_file)]
        if sp.proto == "rpc":
            cmd += ["--service", sp.service]
        if sp.rt_hosts:
            cmd += ["--rt-hosts", ",".join(sp.rt_hosts)]
        if sp.rtshare is not None:
            cmd += ["--rtshare", str(sp.rtshare)]
        if sp.tfreq is not None:
            cmd += ["--tfreq", str(sp.tfreq)]
        return cmd + list(sp.extra_args)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> tuple[str, int]:
        """Start the server and wait until it answers; returns its address.

        memcached gets a port picked here, which another process may take first; it is
        retried (up to three times) on a fresh port.
        """
        self.spec.check()
        attempts = 3 if self.spec.kind == "memcached" else 1
        for attempt in range(attempts):
            try:
                return self._start_once()
            except ServerUnavailable:
                raise
            except ServerError:
                if attempt == attempts - 1:
                    raise
                self._port = None
        raise AssertionError("unreachable")

    def _start_once(self) -> tuple[str, int]:
        self._tmp = tempfile.TemporaryDirectory(prefix="skq-bench-")
        ready, out_path, err_path = self._paths()
        self.command = self.build_command(ready)
        env = dict(os.environ)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        cpus = self.spec.cpus

        def _pin() -> None:  # runs in the child between fork and exec
            if cpus:
                os.sched_setaffinity(0, cpus)

        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                self._proc = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=env,
                    # `python -m` puts the working directory first on sys.path: run in
                    # the private directory so the package under test is the one above
                    cwd=self._tmp.name,
                    preexec_fn=_pin if cpus else None,  # the harness runs no threads
                )
            except OSError as exc:
                self._cleanup()
                raise ServerUnavailable(f"cannot run {self.command[0]}: {exc}") from exc
        try:
            self.address = self._wait_ready(ready, out_path)
        except BaseException:
            self.stop()
            raise
        return self.address

    def _wait_ready(self, ready: Path, out_path: Path) -> tuple[str, int]:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        kind = self.spec.kind
        addr: tuple[str, int] | None = None
        last_err = ""
        while time.monotonic() < deadline:
            rc = self._proc.poll()
            if rc is not None:
                raise ServerError(
                    f"{self.spec.label}: server exited with code {rc} during start-up\n"
                    + self.log_tail()
                )
            # re-read every time: a half-written announcement may have parsed wrongly
            if kind == "memcached":
                assert self._port is not None
                addr = (self.spec.host, self._port)
            elif kind == "skq":
                addr = _read_address(ready, self.spec.host) or _read_address(
                    out_path, self.spec.host
                )
            else:
                addr = _read_address(out_path, self.spec.host)
            if addr is not None:
                try:
                    probe(self.spec.proto, addr, timeout=1.0)
                    return addr
                except ServerError as exc:
                    last_err = str(exc)
            time.sleep(0.05)
        raise ServerError(
            f"{self.spec.label}: not ready after {self.startup_timeout:.0f} s "
            f"({last_err or 'no address announced'})\n" + self.log_tail()
        )

    def stop(self) -> int | None:
        """Stop the server (polite signal, then SIGKILL); returns its exit code."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.stop_timeout)
        if proc is not None:
            self.returncode = proc.returncode
        self._cleanup()
        return self.returncode

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._stash_logs()
            self._tmp.cleanup()
            self._tmp = None

    def _stash_logs(self) -> None:
        self._log_cache = self._read_logs()

    def _read_logs(self, limit: int = 2000) -> str:
        if self._tmp is None:
            return self._log_cache
        _, out_path, err_path = self._paths()
        parts = []
        for name, p in (("stdout", out_path), ("stderr", err_path)):
            with contextlib.suppress(OSError):
                data = p.read_bytes()[-limit:].decode("utf-8", "replace").strip()
                if data:
                    parts.append(f"--- {name} (tail) ---\n{data}")
        return "\n".join(parts)

    def log_tail(self) -> str:
        """The last lines of the server's stdout and stderr."""
        return self._read_logs()

    @property
    def pid(self) -> int | None:
        """The child's pid (None before start)."""
        return self._proc.pid if self._proc is not None else None

    def cpu_s(self) -> float | None:
        """The child's CPU seconds so far (:func:`process_cpu_s`); ``None`` unless it runs."""
        pid = self.pid
        return process_cpu_s(pid) if pid is not None and self.alive() else None

    def alive(self) -> bool:
        """True while the child runs."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_address(path: Path, default_host: str) -> tuple[str, int] | None:
    try:
        text = path.read_text("utf-8", "replace")
    except OSError:
        return None
    return parse_address(text, default_host)

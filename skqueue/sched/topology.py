"""The kqdom topology tree: CPUs grouped by shared caches (docs/semantics.md §3.15; D12).

The CPU and QUEUE policies place a knote on a kevq whose thread runs "near" a CPU:
in the *leaf domain* of that CPU.  The tree mirrors the machine: the root holds every
CPU, each level below is a cache-sharing group (package, last-level cache, core) and
the leaves are the finest groups chosen (by default a core with its SMT siblings).
Node ids are assigned in pre-order, as in the original.

Kevqs are inserted into and removed from leaves only (a kevq joins the leaf of the CPU
its thread is on when it first waits).  Every inner node counts its *active*
children (``num_active``): a leaf is active while it holds a kevq, an inner node while
it has an active child.  Like the original, counts are propagated upwards only while
they cross 0 <-> 1.  (The original maintains but never uses these counts; they are
kept for the dump.)

Concurrency.  Readers (the policy, on every activation) never lock: ``insert`` and
``remove`` never mutate a ``kevqs`` list in place, they build a new list and swap it
in (copy-on-write, like the active-kevq tuple of semantics §3.17).  Writers serialise
on the topology's own lock.  A reader therefore sees either the old or the new list,
never a half-updated one, and the policy re-checks membership in the active set.

Sources.  :meth:`Topology.synthetic` and :meth:`Topology.flat` build posed machines
(tests, the simulator); :meth:`Topology.from_tree` takes any nested CPU grouping;
:meth:`Topology.from_sysfs` reads Linux's ``/sys/devices/system/cpu``: packages,
the last-level cache (``cache/index*/shared_cpu_list``) and cores
(``topology/thread_siblings_list``), collapsing levels that do not split anything.

Threads migrate on Linux unless pinned, while the original assumed pinning (D12).
:meth:`Topology.leaf_for_mask` tells whether an affinity mask lies within one leaf
(then the kevq can stay put); otherwise the runtime re-samples :func:`cpu_source` at
each wait and calls :meth:`Topology.move`.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Union

__all__ = ["Domain", "Topology", "cpu_source", "parse_cpu_list", "LEVELS"]

#: Leaf granularities accepted by :meth:`Topology.from_sysfs`, coarse to fine.
LEVELS = ("llc", "core", "cpu")

# A nested CPU grouping for Topology.from_tree: a leaf is a list of CPU numbers,
# an inner node a list of nodes.
TreeSpec = Sequence[Union[int, "TreeSpec"]]


class Domain:
    """One kqdom node: a set of CPUs; leaves also hold the kevqs placed there."""

    __slots__ = ("id", "level", "cpus", "parent", "children", "kevqs", "num_active")

    def __init__(self, cpus: Iterable[int], level: int = 0, parent: Domain | None = None) -> None:
        #: Pre-order index within the tree (assigned by :class:`Topology`).
        self.id: int = -1
        #: Depth; the root is level 0.
        self.level: int = level
        self.cpus: frozenset[int] = frozenset(cpus)
        self.parent: Domain | None = parent
        self.children: list[Domain] = []
        #: Kevqs placed on this leaf (runtime state; replaced, never mutated in place).
        self.kevqs: list[object] = []
        #: Number of active children (inner nodes only; see the module docstring).
        self.num_active: int = 0

    @property
    def leaf(self) -> bool:
        """True for a leaf domain (no children)."""
        return not self.children

    @property
    def active(self) -> bool:
        """A leaf is active while it holds a kevq, an inner node while a child is."""
        return bool(self.kevqs) if self.leaf else self.num_active > 0

    @property
    def cpu_mask(self) -> int:
        """The CPU set as a bit mask (bit i = CPU i)."""
        mask = 0
        for c in self.cpus:
            mask |= 1 << c
        return mask

    def to_dict(self, kevq_id: Callable[[object], Any] | None = None) -> dict[str, Any]:
        """JSON-serialisable subtree with the semantics §3.4 ``<kqdom>`` fields.

        With ``kevq_id``, leaves also list ``kevqs``: ``kevq_id(q)`` for each kevq.
        """
        d: dict[str, Any] = {
            "id": self.id,
            "level": self.level,
            "cpu_mask": hex(self.cpu_mask),
            "num_children": len(self.children),
            "num_active": self.num_active,
            "leaf": int(self.leaf),
            "num_kevq": len(self.kevqs),
            "children": [c.to_dict(kevq_id) for c in self.children],
        }
        if kevq_id is not None and self.leaf:
            d["kevqs"] = [kevq_id(q) for q in self.kevqs]
        return d

    def __repr__(self) -> str:
        kind = "leaf" if self.leaf else f"{len(self.children)} children"
        return f"Domain(id={self.id}, level={self.level}, cpus={sorted(self.cpus)}, {kind})"


class Topology:
    """A kqdom tree with O(1) CPU -> leaf lookup and kevq placement at the leaves."""

    __slots__ = ("root", "leaves", "domains", "ncpu", "_leaf_by_cpu", "_cpus", "_lock")

    def __init__(self, root: Domain) -> None:
        """Adopt a built tree: assign pre-order ids and levels, index the leaves.

        Leaves' CPU sets must be disjoint and every child's a subset of its parent's.
        """
        self.root = root
        self.domains: list[Domain] = []
        self.leaves: list[Domain] = []
        self._leaf_by_cpu: dict[int, Domain] = {}
        stack: list[tuple[Domain, Domain | None, int]] = [(root, None, 0)]
        while stack:
            node, parent, level = stack.pop()
            node.id = len(self.domains)
            node.parent = parent
            node.level = level
            self.domains.append(node)
            if parent is not None and not node.cpus <= parent.cpus:
                raise ValueError(f"domain cpus {sorted(node.cpus)} not within parent's")
            if not node.cpus:
                raise ValueError("a domain needs at least one CPU")
            if node.leaf:
                self.leaves.append(node)
                for c in node.cpus:
                    if c in self._leaf_by_cpu:
                        raise ValueError(f"CPU {c} is in two leaf domains")
                    self._leaf_by_cpu[c] = node
            for child in reversed(node.children):
                stack.append((child, node, level + 1))
        #: Number of CPUs in the tree (CPU numbers need not be contiguous).
        self.ncpu: int = len(self._leaf_by_cpu)
        self._cpus: list[int] = sorted(self._leaf_by_cpu)
        self._lock = threading.Lock()

    # -- lookup -------------------------------------------------------------------------

    def leaf_of(self, cpu: int) -> Domain:
        """The leaf domain holding ``cpu`` (O(1)).

        A CPU the tree does not know (a synthetic topology smaller than the machine,
        a hot-plugged CPU) maps deterministically onto a known one, ``cpu mod ncpu``
        in sorted order, so placement never fails on the activation path.  Use
        :meth:`has_cpu` to tell the cases apart.
        """
        leaf = self._leaf_by_cpu.get(cpu)
        if leaf is None:
            leaf = self._leaf_by_cpu[self._cpus[cpu % self.ncpu]]
        return leaf

    def has_cpu(self, cpu: int) -> bool:
        """True if ``cpu`` belongs to this tree."""
        return cpu in self._leaf_by_cpu

    @property
    def cpus(self) -> list[int]:
        """All CPU numbers, sorted."""
        return list(self._cpus)

    def leaf_for_mask(self, cpus: Iterable[int]) -> Domain | None:
        """The leaf containing every CPU of ``cpus`` (e.g. a thread's affinity mask),
        or ``None`` if they span several leaves or include unknown CPUs (D12)."""
        leaf: Domain | None = None
        for c in cpus:
            d = self._leaf_by_cpu.get(c)
            if d is None or (leaf is not None and d is not leaf):
                return None
            leaf = d
        return leaf

    # -- kevq membership ----------------------------------------------------------------

    def _check_leaf(self, leaf: Domain) -> None:
        if not leaf.leaf or leaf.id < 0 or leaf.id >= len(self.domains) \
                or self.domains[leaf.id] is not leaf:
            raise ValueError(f"{leaf!r} is not a leaf of this topology")

    def insert(self, kevq: object, leaf: Domain) -> None:
        """Place ``kevq`` on ``leaf``; ancestors' ``num_active`` follow 0 -> 1 crossings."""
        self._check_leaf(leaf)
        with self._lock:
            was_empty = not leaf.kevqs
            leaf.kevqs = [*leaf.kevqs, kevq]
            if was_empty:
                node = leaf
                while node.parent is not None:
                    node = node.parent
                    node.num_active += 1
                    if node.num_active != 1:  # was already active: stop propagating
                        break

    def remove(self, kevq: object, leaf: Domain) -> None:
        """Take ``kevq`` off ``leaf`` (by identity); ``ValueError`` if it is not there.
        Ancestors' ``num_active`` follow 1 -> 0 crossings."""
        self._check_leaf(leaf)
        with self._lock:
            kept = [q for q in leaf.kevqs if q is not kevq]
            if len(kept) == len(leaf.kevqs):
                raise ValueError("kevq is not on this leaf")
            leaf.kevqs = kept
            if not kept:
                node = leaf
                while node.parent is not None:
                    node = node.parent
                    node.num_active -= 1
                    if node.num_active != 0:  # still active: stop propagating
                        break

    def move(self, kevq: object, old: Domain, new: Domain) -> None:
        """Move ``kevq`` between leaves (a migrated thread, D12); no-op if the same."""
        if old is new:
            return
        self.remove(kevq, old)
        self.insert(kevq, new)

    # -- output ---------------------------------------------------------------------------

    def to_dict(self, kevq_id: Callable[[object], Any] | None = None) -> dict[str, Any]:
        """JSON-serialisable nested tree (the ``<kqdom_dump>`` of semantics §3.4)."""
        return self.root.to_dict(kevq_id)

    def __repr__(self) -> str:
        return f"Topology(ncpu={self.ncpu}, leaves={len(self.leaves)}, domains={len(self.domains)})"

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_tree(cls, spec: TreeSpec) -> Topology:
        """Build from a nested grouping: a leaf is a list of CPU numbers, an inner node a
        list of nodes.  ``[[[0, 1], [2, 3]], [[4, 5], [6, 7]]]`` = 2 packages of 2 cores
        of 2 SMT threads.  A top-level list of ints gives a single-leaf tree."""

        def build(node: TreeSpec) -> Domain:
            if not isinstance(node, Sequence) or isinstance(node, str | bytes) or not node:
                raise ValueError(f"bad topology node {node!r}: need a non-empty list")
            if all(isinstance(x, int) for x in node):
                return Domain(x for x in node if isinstance(x, int))
            if any(isinstance(x, int) for x in node):
                raise ValueError(f"bad topology node {node!r}: mixes CPUs and sub-nodes")
            children = [build(x) for x in node if not isinstance(x, int)]
            d = Domain(c for ch in children for c in ch.cpus)
            d.children = children
            return d

        return cls(build(spec))

    @classmethod
    def synthetic(cls, sockets: int, cores_per_socket: int, smt: int = 1) -> Topology:
        """Root -> ``sockets`` -> cores (the leaves, ``smt`` CPUs each).

        CPUs are numbered consecutively: socket s, core c, thread t is CPU
        ``(s * cores_per_socket + c) * smt + t``.
        """
        if sockets < 1 or cores_per_socket < 1 or smt < 1:
            raise ValueError("synthetic topology needs sockets, cores_per_socket, smt >= 1")
        spec = [
            [
                [(s * cores_per_socket + c) * smt + t for t in range(smt)]
                for c in range(cores_per_socket)
            ]
            for s in range(sockets)
        ]
        return cls.from_tree(spec)

    @classmethod
    def flat(cls, ncpu: int) -> Topology:
        """Root -> one leaf per CPU (``0..ncpu-1``)."""
        if ncpu < 1:
            raise ValueError("flat topology needs ncpu >= 1")
        if ncpu == 1:
            return cls.from_tree([0])
        return cls.from_tree([[c] for c in range(ncpu)])

    @classmethod
    def from_sysfs(cls, root_path: str | os.PathLike[str] = "/sys/devices/system/cpu",
                   level: str = "core") -> Topology:
        """Read the machine's topology from Linux sysfs.

        Levels, coarse to fine: package (``topology/package_cpus_list``, else
        ``core_siblings_list``, else ``physical_package_id``), last-level cache (the
        highest-level non-instruction ``cache/index*/shared_cpu_list``), core
        (``topology/thread_siblings_list``) and single CPUs.  ``level`` ("llc",
        "core" or "cpu") picks the leaf granularity.  Levels that would not split their
        parent are collapsed.  Only online CPUs are used.  If nothing can be read, the
        result is ``flat(os.cpu_count())``.
        """
        if level not in LEVELS:
            raise ValueError(f"unknown topology level {level!r}; expected one of {LEVELS}")
        base = Path(root_path)
        try:
            cpus = _online_cpus(base)
        except OSError:
            cpus = []
        if not cpus:
            return cls.flat(os.cpu_count() or 1)
        online = frozenset(cpus)
        partitions: list[dict[int, frozenset[int]]] = [_package_groups(base, cpus)]
        llc = _llc_groups(base, cpus)
        if llc is not None:
            partitions.append(llc)
        if level in ("core", "cpu"):
            partitions.append(_read_groups(base, cpus, ("topology/thread_siblings_list",
                                                        "topology/core_cpus_list")))
        if level == "cpu":
            partitions.append({c: frozenset((c,)) for c in cpus})
        partitions = [{c: (g & online) or frozenset((c,)) for c, g in p.items()}
                      for p in partitions]
        return cls(_build_from_partitions(online, partitions, 0))


# -- sysfs helpers ------------------------------------------------------------------------

_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_cpu_list(text: str) -> list[int]:
    """Parse a Linux CPU list such as ``"0-3,8,10-11"`` (``ValueError`` if malformed)."""
    out: list[int] = []
    text = text.strip()
    if not text:
        return out
    for part in text.split(","):
        m = _RANGE_RE.match(part.strip())
        if m is None:
            raise ValueError(f"malformed CPU list {text!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"malformed CPU list {text!r}")
        out.extend(range(lo, hi + 1))
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _online_cpus(base: Path) -> list[int]:
    text = _read(base / "online")
    if text is not None:
        try:
            return sorted(set(parse_cpu_list(text)))
        except ValueError:
            pass
    return sorted(int(p.name[3:]) for p in base.glob("cpu[0-9]*")
                  if p.name[3:].isdigit() and (p / "topology").is_dir())


def _read_groups(base: Path, cpus: list[int], files: Sequence[str]) -> dict[int, frozenset[int]]:
    groups: dict[int, frozenset[int]] = {}
    for c in cpus:
        group = frozenset((c,))
        for name in files:
            text = _read(base / f"cpu{c}" / name)
            if text is None:
                continue
            try:
                parsed = frozenset(parse_cpu_list(text))
            except ValueError:
                continue
            if c in parsed:
                group = parsed
                break
        groups[c] = group
    return groups


def _package_groups(base: Path, cpus: list[int]) -> dict[int, frozenset[int]]:
    groups = _read_groups(base, cpus, ("topology/package_cpus_list",
                                       "topology/core_siblings_list"))
    if any(len(g) > 1 for g in groups.values()) or len(cpus) == 1:
        return groups
    # No sibling lists: group by package id; with no ids either, one package.
    ids: dict[int, int] = {}
    for c in cpus:
        text = _read(base / f"cpu{c}" / "topology" / "physical_package_id")
        try:
            ids[c] = int(text.strip()) if text is not None else 0
        except ValueError:
            ids[c] = 0
    return {c: frozenset(d for d in cpus if ids[d] == ids[c]) for c in cpus}


def _llc_groups(base: Path, cpus: list[int]) -> dict[int, frozenset[int]] | None:
    groups: dict[int, frozenset[int]] = {}
    for c in cpus:
        best: tuple[int, frozenset[int]] | None = None
        for idx in sorted((base / f"cpu{c}" / "cache").glob("index[0-9]*")):
            kind = (_read(idx / "type") or "").strip()
            lvl_text = _read(idx / "level")
            shared = _read(idx / "shared_cpu_list")
            if kind == "Instruction" or lvl_text is None or shared is None:
                continue
            try:
                lvl, group = int(lvl_text.strip()), frozenset(parse_cpu_list(shared))
            except ValueError:
                continue
            if c in group and (best is None or lvl > best[0]):
                best = (lvl, group)
        if best is None:
            return None  # incomplete cache information: leave the level out
        groups[c] = best[1]
    return groups


def _build_from_partitions(cpus: frozenset[int], partitions: list[dict[int, frozenset[int]]],
                           idx: int) -> Domain:
    """Domain for ``cpus``, split by ``partitions[idx:]``; non-splitting levels collapse."""
    while idx < len(partitions):
        groups: list[frozenset[int]] = []
        seen: set[int] = set()
        for c in sorted(cpus):
            if c in seen:
                continue
            # disjoint and non-empty even if sysfs lists are inconsistent
            g = ((partitions[idx][c] & cpus) | {c}) - seen
            seen |= g
            groups.append(g)
        idx += 1
        if len(groups) > 1:
            node = Domain(cpus)
            node.children = [_build_from_partitions(g, partitions, idx) for g in groups]
            return node
    return Domain(cpus)


def cpu_source() -> Callable[[], int]:
    """A callable returning the CPU the calling thread runs on now.

    Uses ``os.sched_getcpu`` where it exists (CPython 3.14+), else libc's
    ``sched_getcpu`` through ctypes (``os.sched_getcpu`` is absent in 3.11-3.13).  If
    neither works, or a call fails, the answer is CPU 0.
    """
    getcpu: Callable[[], int] | None = getattr(os, "sched_getcpu", None)
    if getcpu is None:
        try:
            fn = ctypes.CDLL(None).sched_getcpu
            fn.restype = ctypes.c_int
            fn.argtypes = []
            fn()
        except (OSError, AttributeError):
            return _cpu_zero
        getcpu = fn

    def current_cpu() -> int:
        try:
            c = int(getcpu())
        except OSError:
            return 0
        return c if c >= 0 else 0

    return current_cpu


def _cpu_zero() -> int:
    return 0

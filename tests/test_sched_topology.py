"""The kqdom topology tree (docs/semantics.md §3.15; D12)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from skqueue.sched import Domain, Topology, cpu_source, parse_cpu_list


def test_synthetic_structure_and_preorder_ids() -> None:
    t = Topology.synthetic(2, 2, smt=2)
    assert t.ncpu == 8 and t.cpus == list(range(8))
    assert [sorted(lf.cpus) for lf in t.leaves] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # pre-order: root 0, socket0 1, its cores 2 3, socket1 4, its cores 5 6
    assert [d.id for d in t.domains] == list(range(7))
    assert [sorted(d.cpus) for d in t.domains] == [
        list(range(8)), [0, 1, 2, 3], [0, 1], [2, 3], [4, 5, 6, 7], [4, 5], [6, 7]]
    assert [d.level for d in t.domains] == [0, 1, 2, 2, 1, 2, 2]
    assert [lf.id for lf in t.leaves] == [2, 3, 5, 6]
    assert t.root.parent is None and not t.root.leaf
    assert all(lf.leaf and lf.parent is not None for lf in t.leaves)
    s1 = t.domains[4]
    assert t.domains[5].parent is s1 and s1.parent is t.root


def test_synthetic_no_smt_and_flat() -> None:
    t = Topology.synthetic(2, 4)
    assert t.ncpu == 8 and len(t.leaves) == 8
    assert sorted(t.leaf_of(5).parent.cpus) == [4, 5, 6, 7]  # type: ignore[union-attr]
    f = Topology.flat(3)
    assert len(f.domains) == 4 and [sorted(lf.cpus) for lf in f.leaves] == [[0], [1], [2]]
    one = Topology.flat(1)
    assert one.root.leaf and one.leaves == [one.root]
    with pytest.raises(ValueError):
        Topology.flat(0)
    with pytest.raises(ValueError):
        Topology.synthetic(0, 1)


def test_leaf_of() -> None:
    t = Topology.synthetic(2, 2, smt=2)
    for cpu in range(8):
        lf = t.leaf_of(cpu)
        assert lf.leaf and cpu in lf.cpus
        assert t.has_cpu(cpu)
    # unknown CPUs map deterministically onto known ones instead of failing
    assert not t.has_cpu(9)
    assert t.leaf_of(9) is t.leaf_of(1) and t.leaf_of(12) is t.leaf_of(4)


def test_leaf_for_mask() -> None:
    t = Topology.synthetic(2, 2, smt=2)
    assert t.leaf_for_mask({2, 3}) is t.leaf_of(2)
    assert t.leaf_for_mask({6}) is t.leaf_of(6)
    assert t.leaf_for_mask({1, 2}) is None
    assert t.leaf_for_mask({1, 99}) is None
    assert t.leaf_for_mask(set()) is None


def test_insert_remove_num_active_propagation() -> None:
    t = Topology.synthetic(2, 2, smt=2)
    root, s0, s1 = t.root, t.domains[1], t.domains[4]
    l0, l1, l2 = t.leaves[0], t.leaves[1], t.leaves[2]
    a, b, c, d = object(), object(), object(), object()
    t.insert(a, l0)
    assert (root.num_active, s0.num_active, s1.num_active) == (1, 1, 0)
    assert l0.active and s0.active and root.active and not s1.active
    t.insert(b, l0)  # leaf already active: no change above
    assert (root.num_active, s0.num_active) == (1, 1)
    t.insert(c, l1)  # second active child of s0; root unchanged (s0 was already active)
    assert (root.num_active, s0.num_active) == (1, 2)
    t.insert(d, l2)
    assert (root.num_active, s0.num_active, s1.num_active) == (2, 2, 1)
    assert l0.kevqs == [a, b]
    t.remove(a, l0)
    assert l0.kevqs == [b] and s0.num_active == 2
    t.remove(b, l0)
    assert (root.num_active, s0.num_active) == (2, 1)
    t.remove(c, l1)
    assert (root.num_active, s0.num_active, s1.num_active) == (1, 0, 1)
    t.remove(d, l2)
    assert all(dom.num_active == 0 for dom in t.domains)
    with pytest.raises(ValueError):
        t.remove(d, l2)
    with pytest.raises(ValueError):
        t.insert(a, root)  # not a leaf
    with pytest.raises(ValueError):
        t.insert(a, Topology.flat(2).leaves[0])  # a leaf of another tree


def test_insert_is_copy_on_write() -> None:
    t = Topology.flat(2)
    lf = t.leaves[0]
    snap = lf.kevqs
    t.insert("q1", lf)
    assert snap == [] and lf.kevqs == ["q1"]
    snap2 = lf.kevqs
    t.remove("q1", lf)
    assert snap2 == ["q1"]


def test_remove_by_identity() -> None:
    t = Topology.flat(1)
    x, y = [1], [1]  # equal but distinct
    t.insert(x, t.root)
    t.insert(y, t.root)
    t.remove(y, t.root)
    assert len(t.root.kevqs) == 1 and t.root.kevqs[0] is x


def test_move() -> None:
    t = Topology.synthetic(1, 2)
    q = object()
    t.insert(q, t.leaves[0])
    t.move(q, t.leaves[0], t.leaves[0])
    assert t.leaves[0].kevqs == [q]
    t.move(q, t.leaves[0], t.leaves[1])
    assert t.leaves[0].kevqs == [] and t.leaves[1].kevqs == [q]
    assert t.domains[1].num_active == 1  # the socket stayed active


def test_concurrent_insert_remove_consistent() -> None:
    t = Topology.synthetic(2, 2)
    leaves = t.leaves

    def worker(k: int) -> None:
        for i in range(300):
            q = (k, i)
            lf = leaves[(k + i) % len(leaves)]
            t.insert(q, lf)
            t.remove(q, lf)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(not lf.kevqs for lf in leaves)
    assert all(d.num_active == 0 for d in t.domains)


def test_to_dict_json() -> None:
    t = Topology.synthetic(2, 2, smt=2)
    t.insert("kq-a", t.leaves[3])
    d = t.to_dict()
    s = json.loads(json.dumps(d))
    assert s["id"] == 0 and s["cpu_mask"] == "0xff" and s["num_children"] == 2
    assert s["leaf"] == 0 and s["num_active"] == 1 and s["level"] == 0
    leaf = s["children"][1]["children"][1]
    assert leaf == {"id": 6, "level": 2, "cpu_mask": "0xc0", "num_children": 0,
                    "num_active": 0, "leaf": 1, "num_kevq": 1, "children": []}
    withids = t.to_dict(kevq_id=str)
    assert withids["children"][1]["children"][1]["kevqs"] == ["kq-a"]


def test_from_tree_validation() -> None:
    t = Topology.from_tree([[0, 1], [2], [3, 4, 5]])
    assert [sorted(lf.cpus) for lf in t.leaves] == [[0, 1], [2], [3, 4, 5]]
    with pytest.raises(ValueError):
        Topology.from_tree([[0, 1], [1, 2]])  # CPU 1 in two leaves
    with pytest.raises(ValueError):
        Topology.from_tree([[0], 1])  # mixed
    with pytest.raises(ValueError):
        Topology.from_tree([])
    with pytest.raises(ValueError):
        Topology.from_tree([[0], []])


def test_parse_cpu_list() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpu_list("5") == [5]
    assert parse_cpu_list("") == []
    for bad in ("a", "3-1", "1,,2", "-1"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


# -- sysfs --------------------------------------------------------------------------------


def _write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def fake_sysfs(root: Path, packages: int, cores: int, smt: int, *, caches: bool = True,
               online: str | None = None) -> Path:
    """packages x cores x smt CPUs, numbered like Linux often does: siblings are
    ``c`` and ``c + ncores_total``.  One L3 per package, private L1/L2 per core."""
    ncores = packages * cores
    ncpu = ncores * smt
    for cpu in range(ncpu):
        core = cpu % ncores
        pkg = core // cores
        sibs = [core + k * ncores for k in range(smt)]
        pkg_cpus = sorted(c for c in range(ncpu) if (c % ncores) // cores == pkg)
        top = root / f"cpu{cpu}" / "topology"
        _write(top / "thread_siblings_list", ",".join(map(str, sibs)))
        _write(top / "package_cpus_list", ",".join(map(str, pkg_cpus)))
        _write(top / "physical_package_id", str(pkg))
        if caches:
            cache = root / f"cpu{cpu}" / "cache"
            for idx, (lvl, kind, shared) in enumerate(
                    [(1, "Data", sibs), (1, "Instruction", sibs), (2, "Unified", sibs),
                     (3, "Unified", pkg_cpus)]):
                d = cache / f"index{idx}"
                _write(d / "level", str(lvl))
                _write(d / "type", kind)
                _write(d / "shared_cpu_list", ",".join(map(str, shared)))
    _write(root / "online", online if online is not None else f"0-{ncpu - 1}")
    return root


def test_from_sysfs_fake_core_level(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "cpu", packages=2, cores=2, smt=2)
    t = Topology.from_sysfs(root)
    # packages {0,1,4,5} and {2,3,6,7}; LLC == package (collapsed); cores are SMT pairs
    assert t.ncpu == 8 and len(t.leaves) == 4
    assert [sorted(lf.cpus) for lf in t.leaves] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert len(t.root.children) == 2
    assert sorted(t.root.children[0].cpus) == [0, 1, 4, 5]
    assert t.leaf_of(4) is t.leaf_of(0)
    assert [d.id for d in t.domains] == list(range(7))


def test_from_sysfs_fake_levels(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "cpu", packages=2, cores=2, smt=2)
    llc = Topology.from_sysfs(root, level="llc")
    assert [sorted(lf.cpus) for lf in llc.leaves] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    cpu = Topology.from_sysfs(root, level="cpu")
    assert len(cpu.leaves) == 8 and all(len(lf.cpus) == 1 for lf in cpu.leaves)
    assert cpu.leaf_of(4).parent is cpu.leaf_of(0).parent  # SMT siblings share a core node
    with pytest.raises(ValueError):
        Topology.from_sysfs(root, level="numa")


def test_from_sysfs_llc_splits_package(tmp_path: Path) -> None:
    # one package of 4 cores with two L3 slices (CCX-like): root -> 2 LLCs -> 2 cores each
    root = tmp_path / "cpu"
    for cpu in range(4):
        top = root / f"cpu{cpu}" / "topology"
        _write(top / "thread_siblings_list", str(cpu))
        _write(top / "package_cpus_list", "0-3")
        d = root / f"cpu{cpu}" / "cache" / "index3"
        _write(d / "level", "3")
        _write(d / "type", "Unified")
        _write(d / "shared_cpu_list", "0-1" if cpu < 2 else "2-3")
    t = Topology.from_sysfs(root)
    assert [sorted(c.cpus) for c in t.root.children] == [[0, 1], [2, 3]]
    assert len(t.leaves) == 4 and t.leaves[0].level == 2


def test_from_sysfs_without_caches_and_offline(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "cpu", packages=1, cores=4, smt=1, caches=False,
                      online="0-1,3")
    t = Topology.from_sysfs(root)
    assert t.cpus == [0, 1, 3]
    assert [sorted(lf.cpus) for lf in t.leaves] == [[0], [1], [3]]


def test_from_sysfs_unreadable_falls_back_to_flat(tmp_path: Path) -> None:
    t = Topology.from_sysfs(tmp_path / "nothing-here")
    n = os.cpu_count() or 1
    assert t.ncpu == n and len(t.leaves) == n


def test_from_sysfs_this_machine() -> None:
    t = Topology.from_sysfs()
    n = os.cpu_count() or 1
    assert 1 <= t.ncpu <= n
    base = Path("/sys/devices/system/cpu")
    if (base / "cpu0/topology/thread_siblings_list").exists():
        sib = set(parse_cpu_list((base / "cpu0/topology/thread_siblings_list").read_text()))
        assert t.leaf_of(0).cpus == frozenset(sib)
    json.dumps(t.to_dict())
    for level in ("llc", "core", "cpu"):
        assert Topology.from_sysfs(level=level).ncpu == t.ncpu


def test_cpu_source() -> None:
    get = cpu_source()
    seen = {get() for _ in range(20)}
    n = os.cpu_count() or 1
    assert all(isinstance(c, int) and 0 <= c < max(n, 1) for c in seen)
    # a thread pinned to one CPU reports that CPU
    allowed = sorted(os.sched_getaffinity(0))
    target = allowed[-1]
    result: list[int] = []

    def pinned() -> None:
        os.sched_setaffinity(0, {target})
        result.append(get())

    th = threading.Thread(target=pinned)
    th.start()
    th.join()
    assert result == [target]


def test_domain_repr_and_mask() -> None:
    d = Domain([0, 3])
    assert d.cpu_mask == 0b1001 and d.leaf and "leaf" in repr(d)

"""Server CPU per request, per policy, at one offered load: the runtime's overhead.

The real server runs in this process over a RocksDB store preloaded like `skq bench
mixgraph`'s, the rpc-kv mixgraph load comes from a generator process, and the process's
CPU time (user + system) over the point is divided by the requests served
(skqueue.sim.validate.measure_real, as `skq sim validate-kv` measures it).  To compare two
trees, run this with each tree first on PYTHONPATH, alternating:

    PYTHONPATH=TREE .venv-ft/bin/python tools/cpu_per_request.py --policies vanilla,best2
"""

from __future__ import annotations

import argparse
import tempfile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policies", default="vanilla,best2,best2_ws")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--qps", type=float, default=3000.0)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--scan-cap", type=int, default=0, help="0: uncapped scans (the paper's)")
    p.add_argument("--conns", type=int, default=110)
    args = p.parse_args()

    import skqueue
    from skqueue.server.kv import RocksKV, populate
    from skqueue.sim.validate import measure_real

    with tempfile.TemporaryDirectory(prefix="skq-cpu-") as tmp:
        db = RocksKV(f"{tmp}/db")
        try:
            populate(db, args.keys, value_size=100)
            print(f"skqueue from {skqueue.__file__}; store {db.backend}, {args.keys} keys; "
                  f"{args.threads} threads, {args.qps:g} req/s, {args.duration:g} s")
            for policy in args.policies.split(","):
                r = measure_real(policy, args.qps, duration_s=args.duration, warmup_s=0.5,
                                 threads=args.threads, connections=args.conns, kv=db,
                                 protocol="rpc-kv", interarrival="fb_ia",
                                 kv_keyspace=args.keys, kv_scan_cap=args.scan_cap or None)
                print(f"{policy:>10}: {r.cpu_per_req_us:6.1f} us CPU/request, achieved "
                      f"{r.achieved:,.0f} req/s, p50 {r.p50:,.0f} us, p99 {r.p99:,.0f} us",
                      flush=True)
        finally:
            db.close()


if __name__ == "__main__":
    main()

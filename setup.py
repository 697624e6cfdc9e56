"""Build the optional C extensions; skqueue works without them.

* ``skqueue._speedups``: the core's accelerator (pure-Python fallback).
* ``skqueue.server._rocksdb``: RocksDB through its C API for the KV store (fallback:
  rocksdict).  Built only when RocksDB's C header is found (Debian: ``librocksdb-dev``; other
  places: ``ROCKSDB_PREFIX=/prefix``); ``SKQUEUE_NO_ROCKSDB=1`` skips it.  A build without
  the header installs cleanly without it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from setuptools import Extension, setup


def _rocksdb_extension() -> list[Extension]:
    if os.environ.get("SKQUEUE_NO_ROCKSDB"):
        return []
    prefixes = [os.environ["ROCKSDB_PREFIX"]] if os.environ.get("ROCKSDB_PREFIX") else []
    prefixes += ["/usr", "/usr/local"]
    for prefix in prefixes:
        include = Path(prefix) / "include"
        if not (include / "rocksdb" / "c.h").is_file():
            continue
        version = "unknown"
        try:
            text = (include / "rocksdb" / "version.h").read_text()
            parts = [re.search(rf"#define ROCKSDB_{p}\s+(\d+)", text) for p in
                     ("MAJOR", "MINOR", "PATCH")]
            if all(parts):
                version = ".".join(m.group(1) for m in parts if m)
        except OSError:
            pass
        lib_dirs = [str(Path(prefix) / "lib")] if prefix not in ("/usr", "/usr/local") else []
        return [
            Extension(
                "skqueue.server._rocksdb",
                ["skqueue/server/_rocksdb.c", "skqueue/server/_rocksdb_scan.c"],
                depends=["skqueue/server/_rocksdb.h"],
                include_dirs=[str(include)] if prefix != "/usr" else [],
                library_dirs=lib_dirs,
                libraries=["rocksdb"],
                define_macros=[("SKQ_ROCKSDB_VERSION", f'"{version}"')],
                optional=True,
            )
        ]
    return []


setup(
    ext_modules=[
        Extension("skqueue._speedups", ["skqueue/_speedups.c"], optional=True),
        *_rocksdb_extension(),
    ]
)

"""Check that skqueue runs on a free-threaded CPython with the GIL really off.

Imports every module of the package (an extension module that does not declare
``Py_mod_gil`` would switch the GIL back on, with only a RuntimeWarning), then checks
that the GIL is still disabled and that the C helper was built and loaded (unless
``SKQUEUE_PURE`` is set).  Exit status 0 on success, 1 with the reason otherwise.

Usage: ``.venv-ft/bin/python tools/ft-check.py`` (``make test-ft`` runs it).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import sysconfig
import warnings


def main() -> int:
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        print(f"ft-check: {sys.executable} is not a free-threaded build", file=sys.stderr)
        return 1
    if sys._is_gil_enabled():
        print("ft-check: the GIL is enabled at start-up (PYTHON_GIL=1 or -X gil=1?)",
              file=sys.stderr)
        return 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        names = ["skqueue"]
        import skqueue

        for mod in pkgutil.walk_packages(skqueue.__path__, "skqueue."):
            if mod.name.rsplit(".", 1)[-1] != "__main__":  # importing it runs the CLI
                names.append(mod.name)
        for name in names:
            importlib.import_module(name)
            if sys._is_gil_enabled():
                why = "; ".join(str(w.message) for w in caught) or "no warning"
                print(f"ft-check: importing {name} enabled the GIL: {why}", file=sys.stderr)
                return 1
    from skqueue._accel import speedups

    if speedups is None and not os.environ.get("SKQUEUE_PURE"):
        print("ft-check: the C helper skqueue._speedups was not built or does not load",
              file=sys.stderr)
        return 1
    mode = "pure Python" if speedups is None else "with the C helper"
    print(f"ft-check: {len(names)} modules imported {mode}, GIL disabled "
          f"(Python {sys.version.split()[0]}{sys.abiflags})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

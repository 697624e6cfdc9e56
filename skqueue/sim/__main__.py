"""``python -m skqueue.sim``: the ``skq sim`` command, standalone."""

from __future__ import annotations

from .cli import run_cli

raise SystemExit(run_cli())

"""The README's "Writing a server" example runs as printed, and with every kind of policy.

The code block is extracted from README.md and executed unchanged (then with the policy
string swapped).  The package's PEP 561 marker is checked here too.
"""

from __future__ import annotations

import contextlib
import io
import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Writing a server\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no python block in the README's 'Writing a server' section"
    return m.group(1)


def run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    return out.getvalue()


def test_readme_server_example_runs_as_printed() -> None:
    assert run(readme_example()) == "b'HELLO\\n'\n"


@pytest.mark.parametrize("policy", ["vanilla", "legacy", "rand", "cpu2_ws", "queue1"])
def test_readme_server_example_with_any_policy(policy: str) -> None:
    code = readme_example()
    assert 'policy="best2_ws"' in code
    assert run(code.replace('policy="best2_ws"', f'policy="{policy}"')) == "b'HELLO\\n'\n"


def test_package_is_typed() -> None:
    assert (REPO / "skqueue" / "py.typed").is_file()
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["skqueue"]

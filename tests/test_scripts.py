"""The benchmark and evaluation scripts under ``scripts/`` still name what trtq has.

Why: the scripts are how every measurement in ``docs/`` is made again, and nothing else runs them in CI (they need
real models and minutes). A function moved between trtq's modules left ``scripts/bench_quantize.py`` failing at
its first line. Here every ``from trtq... import NAME`` in every script, at any depth, is resolved against the
package: the module imports and has the name.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parent.parent / "scripts").glob("*.py"))


def trtq_imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, name or None for ``import trtq.x``, line) of every trtq import in the script."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "trtq":
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.split(".")[0] == "trtq"]
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_a_scripts_trtq_imports_resolve(script: Path):
    for module, name, line in trtq_imports(script):
        imported = importlib.import_module(module)
        assert name is None or hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}"), \
            f"{script.name}:{line}: {module} has no {name}"


def test_the_check_sees_a_stale_import(tmp_path):
    stale = tmp_path / "stale.py"
    stale.write_text("def main():\n    from trtq.accuracy.quantize import format_steps\n")
    [(module, name, _line)] = trtq_imports(stale)
    assert not hasattr(importlib.import_module(module), name)

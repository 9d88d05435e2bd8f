"""Layering rules that keep the library usable without the CLI: read from the source with ``ast``,
so a violation fails here even when no test happens to import the offending module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "trtq"
CLI_LAYER = ("cli.py", "commands/")  # relative to trtq/: the only places allowed to import click


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_only_the_cli_layer_imports_click():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20  # the scan found the package
    offenders = []
    for path in sources:
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == CLI_LAYER[0] or rel.startswith(CLI_LAYER[1]):
            continue
        if any(module == "click" or module.startswith("click.") for module in _imported_modules(path)):
            offenders.append(rel)
    assert offenders == [], f"click imported outside trtq/cli.py and trtq/commands/: {offenders}"


def test_the_scan_sees_function_level_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import click.types\n    from click import echo\n")
    assert _imported_modules(sample) == {"click.types", "click"}

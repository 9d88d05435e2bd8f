"""Every ``trtq`` command in README.md and docs/*.md runs, so the documented examples cannot go stale.

Why: users copy commands from the README and the docs; an option renamed or a file moved must fail CI, not the
user. In the manner of Polygraphy's ``tests/test_examples.py``:

* Fenced code blocks in ``bash``, ``sh``, ``shell`` or ``console`` are read. In ``bash``/``sh``/``shell`` blocks
  every line that starts with ``trtq `` (after an optional ``$ ``) is a command; in ``console`` blocks only the
  ``$ trtq ...`` lines are (the other lines are what the command printed). Lines ending in ``\\`` continue on the
  next line; a trailing ``# comment`` is dropped.
* Lines that are not ``trtq`` commands (``pip install``, ``python scripts/...``, comments) are NOT run, and neither
  are blocks in other languages: synopses are written in ``text`` blocks, configs in ``toml`` blocks.
* The commands of one block run in order in one fresh temporary folder holding ``calib_data/`` and ``tests/data/``
  (links to the repository's) and a copy of ``trtq.toml``, so a later command may use an earlier one's files.
  Each runs as ``python -m trtq ...`` with this interpreter and must exit 0 and leave every file it says it writes
  (``-o``, ``--cache``, ``--json``, ``--html``, ``--keep-out``, ..., and what ``trtq quantize`` and ``trtq run``
  write beside their output).
* A block that cannot run here carries ``<!-- doc-test: skip: REASON -->`` on the line right before its opening
  fence; it is reported as skipped with REASON. A block with no marker must run; a malformed or stray marker fails.

Also: the README stays a ten-minute read (at most 300 lines) and holds CI's test command verbatim, every ``trtq``
command has an example in the README, and every relative link in the README and docs/ resolves.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport, a dependency there
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOC_FILES = [README, *sorted((REPO / "docs").glob("*.md"))]
CI_COMMAND = "pip install -e '.[test]' && pytest"
MAX_README_LINES = 300
RUN_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`]*)")
MARKER = re.compile(r"^<!--\s*doc-test:(?P<body>.*?)-->$")
SKIP = re.compile(r"^\s*skip:\s*(?P<reason>\S.*?)\s*$")
SHELL_SYNTAX = frozenset({"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"})
COMMAND_TIMEOUT_S = 300

# options whose value is a file or folder the command writes, per subcommand (elsewhere, e.g. evaluate's --cache,
# the same option names an input)
OUTPUT_OPTIONS: dict[str, tuple[str, ...]] = {
    "quantize": ("-o", "--output"),
    "calibrate": ("--cache", "--calibration-cache", "--json", "--save-stats"),
    "evaluate": ("--json", "--html", "--plot-dir"),
    "sensitivity": ("--json", "--html", "--plot-dir", "--keep-out"),
    "export": ("-o", "--output"),
    "build": ("-o", "--output"),
    "report": ("--json", "--html"),
    "bench": ("--json", "--export-profile", "--export-times"),
    "run": (),
}
QUANTIZE_SIDECARS = (".cache", ".keep.txt", ".report.json", ".report.html")


@dataclass(frozen=True)
class Fenced:
    """One fenced code block: where it starts (1-based line of the opening fence), its language and lines, and
    the line right before the opening fence (where a doc-test marker goes)."""

    path: Path
    line: int
    language: str
    body: tuple[str, ...]
    line_before: str


@dataclass(frozen=True)
class Example:
    """A block with at least one trtq command: the commands in order, and the skip reason of its marker if any."""

    path: Path
    line: int
    commands: tuple[str, ...]
    skip_reason: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"


def fenced_blocks(path: Path) -> list[Fenced]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Fenced] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i].lstrip())
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                break
            body.append(lines[i])
            i += 1
        blocks.append(Fenced(path, start + 1, opening["lang"].lower(), tuple(body),
                             lines[start - 1].strip() if start > 0 else ""))
        i += 1  # past the closing fence
    return blocks


def trtq_commands(block: Fenced) -> list[str]:
    """The trtq command lines of a block, continuations joined (empty for languages that are not run)."""
    if block.language not in RUN_LANGUAGES:
        return []
    logical: list[str] = []
    pending = ""
    for raw in block.body:
        line = f"{pending} {raw.strip()}".strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        pending = ""
        logical.append(line)
    if pending:
        logical.append(pending)
    commands = []
    for line in logical:
        if line.startswith("$ "):
            line = line[2:].lstrip()
        elif block.language == "console":
            continue  # printed output
        if line.startswith("trtq "):
            commands.append(line)
    return commands


def skip_reason(block: Fenced) -> str | None:
    """The REASON of a well-formed skip marker right before the block (a malformed one fails its own test)."""
    marker = MARKER.match(block.line_before)
    skip = SKIP.match(marker["body"]) if marker else None
    return skip["reason"] if skip else None


def examples(path: Path) -> list[Example]:
    found = []
    for block in fenced_blocks(path):
        commands = trtq_commands(block)
        if commands:
            found.append(Example(path, block.line, tuple(commands), skip_reason(block)))
    return found


ALL_EXAMPLES = [example for path in DOC_FILES for example in examples(path)]


def option_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """Every value given to one of ``names`` (``--opt VALUE`` or ``--opt=VALUE``), in order."""
    values = []
    for i, token in enumerate(argv):
        for name in names:
            if token == name and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif token.startswith(f"{name}="):
                values.append(token.split("=", 1)[1])
    return values


def first_positional(argv: list[str]) -> str | None:
    """The argument right after the subcommand when it is not an option (MODEL, CONFIG)."""
    return argv[2] if len(argv) > 2 and not argv[2].startswith("-") else None


def run_output_folder(argv: list[str], cwd: Path) -> Path:
    """Where ``trtq run`` writes: ``-o``, else the config's ``output`` (relative to the config), else its default."""
    given = option_values(argv, ("-o", "--output"))
    if given:
        return cwd / given[-1]
    config = cwd / (first_positional(argv) or "trtq.toml")
    table = tomllib.loads(config.read_text(encoding="utf-8"))
    if config.name == "pyproject.toml":
        table = table.get("tool", {}).get("trtq", {})
    return config.parent / table.get("output", "trtq-artifacts")


def promised_files(argv: list[str], cwd: Path) -> list[Path]:
    """The files a documented command says it writes (its output options, and the files written beside them)."""
    command = argv[1]
    paths = [cwd / value for value in option_values(argv, OUTPUT_OPTIONS.get(command, ()))]
    if command == "quantize":
        model = first_positional(argv)
        onnx = paths[-1] if paths else (cwd / f"{Path(model).stem}.int8.onnx" if model else None)
        if onnx is not None:
            base = str(onnx)[: -len(".onnx")] if onnx.suffix == ".onnx" else str(onnx)
            paths = [onnx, *(Path(base + suffix) for suffix in QUANTIZE_SIDECARS)]
    elif command == "calibrate" and not paths and first_positional(argv):
        calibrator = (option_values(argv, ("--calibrator",)) or ["auto"])[-1]
        paths = [cwd / f"{Path(first_positional(argv) or '').stem}-{calibrator}.cache"]
    elif command == "run" and "--check" not in argv:
        folder = run_output_folder(argv, cwd)
        paths = [folder / "manifest.json", folder / "summary.md"]
    return paths


def workspace(folder: Path) -> Path:
    """A folder where the documented paths resolve: calib_data/, tests/data/ and trtq.toml as in the repository."""
    for relative in ("calib_data", "tests/data"):
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(REPO / relative, target_is_directory=True)
        except OSError:  # no symlinks here (some Windows setups): copy instead
            shutil.copytree(REPO / relative, target)
    shutil.copy(REPO / "trtq.toml", folder / "trtq.toml")
    return folder


def run_trtq(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("GITHUB_STEP_SUMMARY", None)
    return subprocess.run([sys.executable, "-m", "trtq", *argv[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S)


@pytest.mark.parametrize("example", ALL_EXAMPLES, ids=[example.name for example in ALL_EXAMPLES])
def test_documented_commands_run(example: Example, tmp_path: Path) -> None:
    if example.skip_reason is not None:
        pytest.skip(example.skip_reason)
    cwd = workspace(tmp_path)
    for line in example.commands:
        argv = shlex.split(line, comments=True)
        shell = sorted(SHELL_SYNTAX.intersection(argv))
        assert not shell, f"{example.name}: a documented command must be a plain trtq command, got {shell}: {line}"
        result = run_trtq(argv, cwd)
        assert result.returncode == 0, (
            f"{example.name}: `{line}` exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}")
        missing = [str(path.relative_to(cwd)) for path in promised_files(argv, cwd) if not path.exists()]
        assert not missing, f"{example.name}: `{line}` exited 0 but did not write {missing}"


def test_the_docs_hold_examples_that_run() -> None:
    # the parser itself is part of what is tested: a README whose blocks it no longer found would pass vacuously
    readme = [example for example in ALL_EXAMPLES if example.path == README]
    assert len([example for example in readme if example.skip_reason is None]) >= 8
    assert any(example.path != README and example.skip_reason is None for example in ALL_EXAMPLES)


def test_every_command_has_a_readme_example() -> None:
    import click

    from trtq.cli import cli

    commands = set(cli.list_commands(click.Context(cli)))
    shown = {shlex.split(line)[1] for example in ALL_EXAMPLES if example.path == README
             for line in example.commands}
    assert commands <= shown, f"no README example for: {sorted(commands - shown)}"


def test_doc_test_markers_stand_right_before_a_trtq_block() -> None:
    problems = []
    for path in DOC_FILES:
        blocks = fenced_blocks(path)
        inside = {line for block in blocks for line in range(block.line, block.line + len(block.body) + 2)}
        before_block = {block.line - 1: block for block in blocks}
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if "<!--" not in text or "doc-test" not in text or number in inside:
                continue
            block = before_block.get(number)
            where = f"{path.relative_to(REPO).as_posix()}:{number}"
            if block is None:
                problems.append(f"{where}: a doc-test marker must be on the line right before a code block")
            elif not trtq_commands(block):
                problems.append(f"{where}: a doc-test marker before a block with no trtq command to skip")
            elif skip_reason(block) is None:
                problems.append(f"{where}: a doc-test marker reads '<!-- doc-test: skip: REASON -->', got {text!r}")
    assert not problems, "\n".join(problems)


def test_readme_is_a_ten_minute_read_with_the_ci_command() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    assert CI_COMMAND in text
    assert CI_COMMAND in (REPO / ".ci" / "run").read_text(encoding="utf-8")  # the README's command is CI's


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    fenced = {line for block in fenced_blocks(path) for line in range(block.line, block.line + len(block.body) + 2)}
    seen: dict[str, int] = {}
    found = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if heading and number not in fenced:
            base = slug(heading[1])
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def prose(path: Path) -> str:
    """The text outside code blocks and inline code, where links live."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fenced = {line for block in fenced_blocks(path) for line in range(block.line, block.line + len(block.body) + 2)}
    kept = "\n".join(line for number, line in enumerate(lines, start=1) if number not in fenced)
    return re.sub(r"`[^`\n]*`", "", kept)


def test_relative_links_resolve() -> None:
    broken = []
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO).as_posix()} -> {target}"
            if not linked.exists():
                broken.append(f"{where}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{where}: no such heading")
    assert not broken, "\n".join(broken)

"""Layout rules of trtq, read from the source with ``ast`` (nothing is imported or run).

1. ``trtq/trt/`` is the only package that touches TensorRT or a CUDA binding: no other module imports
   ``tensorrt``, ``cuda`` (``cuda.bindings``, ``cuda.cudart``) or ``pycuda``, or imports or calls the
   loaders that hand out those modules (``import_tensorrt``, the CUDA backend factory). Outside
   ``trt/`` code asks ``trt/`` for plain data (e.g. :func:`trtq.trt.tensorrt_info`).
2. ``trtq/distributed/`` is the only package that imports Ray (``import ray``, ``from ray ...``), and only
   inside functions, so ``import trtq`` never loads it: only a run given ``--ray`` does.
3. No import cycle among trtq's modules, counting imports deferred into function bodies too: a cycle
   kept alive by a deferred import breaks as soon as someone moves that import to the top.
4. The range methods live in one table (``trtq/range_methods.py``): the other modules' lists are views of it
   (this one imports them).
5. ``trtq/trt/`` imports nothing above it (the accuracy loop, the jobs, the pipeline, the commands): an INT8 build by
   ``trtq quantize`` is handed its quantizer by ``trtq.jobs.build``.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "trtq"

# Top-level modules that are TensorRT or a CUDA binding.
BACKEND_MODULES = {"tensorrt", "tensorrt_bindings", "tensorrt_libs", "cuda", "pycuda", "cupy"}
# Functions and classes in trtq/trt/ that load one of those modules and hand it (or a wrapper) out.
LOADERS = {"import_tensorrt", "get_backend", "_import_first", "CudaPythonBackend", "PycudaBackend", "load_cupy"}
# Modules still outside the rule, with what they use. trtq/pipeline/ is being refactored on another
# branch; it should ask trtq.trt.tensorrt_info(...).version and a trt/ helper for the device instead.
# The test asserts this list exactly, so an entry must go when its module is fixed.
KNOWN_EXCEPTIONS: dict[str, set[str]] = {}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the trtq package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def backend_uses(source: str) -> set[str]:
    """What ``source`` imports of TensorRT/CUDA (``import:NAME``) and which loaders it imports or calls."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {f"import:{a.name}" for a in node.names if a.name.split(".")[0] in BACKEND_MODULES}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] in BACKEND_MODULES:
                found.add(f"import:{node.module}")
            found |= {a.name for a in node.names if a.name in LOADERS}
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in LOADERS:
                found.add(name)
            elif name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    if arg.value.split(".")[0] in BACKEND_MODULES:
                        found.add(f"import:{arg.value}")
    return found


def test_only_trt_touches_tensorrt_and_cuda() -> None:
    outside: dict[str, set[str]] = {}
    for path in _modules().values():
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("trtq/trt/"):
            continue
        uses = backend_uses(path.read_text())
        if uses:
            outside[rel] = uses
    assert outside == KNOWN_EXCEPTIONS, "outside trtq/trt/, only trtq/trt/ may import TensorRT/CUDA or their loaders"


def test_backend_uses_sees_every_form() -> None:
    """The checker itself: each way of reaching TensorRT or CUDA is found, plain data access is not."""
    source = """
import tensorrt as trt
import cuda.bindings.runtime
from pycuda import driver
def f():
    from trtq.trt import import_tensorrt
    from trtq.trt.cuda import get_backend
    importlib.import_module("tensorrt")
    trtq.trt.import_tensorrt("x")
"""
    assert backend_uses(source) == {"import:tensorrt", "import:cuda.bindings.runtime", "import:pycuda",
                                    "import_tensorrt", "get_backend"}
    assert backend_uses("from trtq.trt import tensorrt_info\nfrom trtq.trt.cuda import BACKENDS, CudaError\n") == set()


def import_graph() -> dict[str, set[str]]:
    """Module -> the trtq modules it imports, at module level or inside functions.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    if f"{module}.{alias.name}" in modules:
                        targets.add(f"{module}.{alias.name}")
                    elif module in modules:
                        targets.add(module)
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_among_trtq_modules() -> None:
    graph = import_graph()
    assert "trtq.report.profile_types" in graph["trtq.report.trtexec_log"]  # a module-level import
    assert "trtq.trt.inspect" in graph["trtq.report.engine"]  # an import deferred into a function
    assert cycles(graph) == []


def test_cycles_finds_cycles_of_any_length() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def ray_imports(source: str) -> list[tuple[int, bool]]:
    """(line, at module level) of every import of Ray in ``source``."""
    tree = ast.parse(source)
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        if any(n.split(".")[0] == "ray" for n in names):
            found.append((node.lineno, id(node) in top))
    return found


def test_only_distributed_imports_ray_and_only_lazily() -> None:
    outside, eager = {}, {}
    for path in _modules().values():
        rel = path.relative_to(REPO).as_posix()
        found = ray_imports(path.read_text())
        if found and not rel.startswith("trtq/distributed/"):
            outside[rel] = found
        if any(at_top for _, at_top in found):
            eager[rel] = found
    assert outside == {}, "only trtq/distributed/ may import ray"
    assert eager == {}, "ray is imported inside functions only (import trtq must not load it)"
    assert ray_imports("import ray\ndef f():\n    from ray import util\n") == [(1, True), (3, False)]


def test_range_methods_live_in_one_table() -> None:
    """Every command's list of calibrators, the cache headers and the TensorRT classes are views of
    trtq.range_methods: a method known to one command is known to all, and no other module spells a header word
    or a TensorRT calibrator class."""
    from trtq.accuracy.quantize import CALIBRATORS
    from trtq.cache import HEADER_ALGORITHM
    from trtq.range_methods import AUTO, RANGE_METHODS, TRTQ_METHODS
    from trtq.trt import CALIBRATOR_CLASSES
    from trtq.trt.plan import BUILD_CALIBRATORS

    names = {m.name for m in RANGE_METHODS}
    assert set(CALIBRATORS) == {AUTO, *TRTQ_METHODS} and set(BUILD_CALIBRATORS) == {AUTO, *names}
    assert set(HEADER_ALGORITHM) == {AUTO, *names}
    assert set(CALIBRATOR_CLASSES.values()) == {m.tensorrt_class for m in RANGE_METHODS} - {None}
    words = {m.cache_header for m in RANGE_METHODS} | {m.tensorrt_class for m in RANGE_METHODS} - {None}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "range_methods.py":
            continue
        text = path.read_text()
        spelled = sorted(w for w in words if f'"{w}"' in text or f"'{w}'" in text)
        assert not spelled, f"{path.relative_to(PACKAGE.parent)} spells {spelled}: read trtq.range_methods"


# packages trtq/trt/ may not import from, at module level or inside a function: it is handed ranges, a keep set and,
# for an INT8 build by trtq quantize, a quantizer (trtq.jobs.build); it never calls up into them
ABOVE_TRT = ("trtq.accuracy", "trtq.jobs", "trtq.pipeline", "trtq.commands", "trtq.distributed", "trtq.cli")


def test_trt_never_imports_the_accuracy_loop_jobs_or_commands() -> None:
    graph = import_graph()
    upward = {module: sorted(d for d in deps if d.startswith(ABOVE_TRT))
              for module, deps in graph.items() if module.startswith("trtq.trt")}
    assert {m: d for m, d in upward.items() if d} == {}
    assert "trtq.trt.build" in graph["trtq.jobs.build"]  # the job calls down into the TensorRT layer

"""The import graph: the layers (pipeline/core at the bottom, then the device agent, the backends, the targets,
the stages, the engine), no circle among the project's modules, and the CLI's start-up imports no torch."""
from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "backends", "stages", "targets")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(statement: ast.stmt) -> bool:
    """`if TYPE_CHECKING:`: imports for annotations that never run, so they cannot close a circle."""
    test = getattr(statement, "test", None)
    return isinstance(statement, ast.If) and isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _imported(name: str, path: Path, everywhere: bool = False) -> set[str]:
    """Modules named by the module-level imports of one file (inside top-level if/try too, but not under
    `if TYPE_CHECKING:`); `everywhere`: every import in the file, inside functions and TYPE_CHECKING too."""
    names = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for statement in ast.parse(path.read_text()).body:
        if _type_checking_only(statement) and not everywhere:
            continue
        nested = everywhere or isinstance(statement, (ast.If, ast.Try))
        for node in ast.walk(statement) if nested else [statement]:
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def import_graph(everywhere: bool = False, parents: bool = True) -> dict[str, set[str]]:
    """module -> the project modules it imports at import time (`everywhere`: anywhere in the file), with the
    packages above each (`parents`: Python imports them first) but not the module's own."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for imported in _imported(name, path, everywhere):
            parts = imported.split(".")
            known = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules),
                         None)
            if known is None:
                continue
            pieces = known.split(".")
            edges |= {".".join(pieces[:i]) for i in range(1, len(pieces) + 1)} if parents else {known}
        graph[name] = {e for e in edges if e != name and not name.startswith(e + ".")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    """At import time, TYPE_CHECKING imports included (an annotation's import is a dependency too)."""
    graph = import_graph()
    for name, path in _modules().items():
        graph[name] |= {m for m in _type_checking_imports(name, path) if m in graph and m != name}
    assert not circles(graph)


def _type_checking_imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    guarded = [s for s in tree.body if _type_checking_only(s)]
    return {n.module for s in guarded for n in ast.walk(s) if isinstance(n, ast.ImportFrom) and n.module}


# Who may import whom, anywhere in a file (functions and TYPE_CHECKING included): a layer imports only itself
# and the modules its patterns match. The agent runs alone on a device, so it imports none of ours but the
# registry's adapter list and the adapters the backends hold (backends/<name>/agent.py, found by name).
LAYERS = {
    "pipeline.core": (),
    "targets.agent": ("backends", "backends.*.agent"),
    "backends": ("pipeline.core*", "targets.agent*"),
    "targets": ("pipeline.core*", "targets.agent*", "backends*"),
    "stages": ("pipeline.core*", "backends*", "targets*"),
}


def _layer(module: str) -> str | None:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


def _allowed(layer: str, module: str) -> bool:
    return _layer(module) == layer or any(fnmatch.fnmatchcase(module, pattern) for pattern in LAYERS[layer])


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        layer = _layer(module)
        if layer is None:
            continue
        found += [f"{module} imports {m}" for m in sorted(imported) if not _allowed(layer, m)]
    return found


def test_each_layer_imports_only_the_layers_below_it():
    assert layer_violations(import_graph(everywhere=True, parents=False)) == []


def test_the_layer_check_finds_a_violation():
    graph = {"backends.onnx.export": {"stages.models", "pipeline.core.errors"},
             "pipeline.core.lock": {"pipeline.config"},
             "targets.agent.cli": {"backends.onnx.agent", "backends.onnx.export"},
             "targets.latency": {"stages.data"}, "stages.export": {"backends.onnx", "pipeline.graph"}}
    assert layer_violations(graph) == ["backends.onnx.export imports stages.models",
                                       "pipeline.core.lock imports pipeline.config",
                                       "stages.export imports pipeline.graph",
                                       "targets.agent.cli imports backends.onnx.export",
                                       "targets.latency imports stages.data"]


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_cli_starts_without_torch():
    """`manifold-edge schema`, `--help`, the config load, and the engine's graph, report and Python API modules
    need no torch (nor a stage or a runtime) to import."""
    code = ("import sys, pipeline.cli, pipeline.config, pipeline.docs, pipeline.graph, pipeline.report.build, "
            "pipeline.report.markdown, pipeline.report.html, pipeline.api; "
            "heavy = [m for m in ('torch', 'timm', 'onnx', 'openvino', 'coremltools') if m in sys.modules]; "
            "print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_status_imports_no_stage_library(tmp_path):
    """Every stage module imports only the engine at the top (torch, timm and the runtimes where it checks or
    runs), so `status` plans every stage's cache key without them."""
    code = ("import sys; from pipeline.config import load_config; from pipeline.graph import STAGES, Pipeline, "
            f"stage_class; cfg = load_config(None, [\"run.output_dir='{tmp_path}'\"]); "
            "[stage_class(name) for name in STAGES]; print([s.state for s in Pipeline(cfg).status()]); "
            "print([m for m in ('torch', 'timm', 'onnx', 'onnxruntime', 'openvino', 'coremltools') "
            "if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    states, heavy = done.stdout.strip().splitlines()
    assert done.returncode == 0 and states == str(["missing"] * 7) and heavy == "[]", done.stdout + done.stderr


def test_coremltools_is_imported_quietly_without_the_frameworks_of_converters_never_called():
    """As the pipeline imports it (backends.coreml.package.coremltools): the 'Failed to load _ML...Proxy' lines
    coremltools logs eight times on Linux come once with the filter; scikit-learn, transformers, ExecuTorch's EXIR...
    which it imports for converters the pipeline never calls (3 s) are hidden then, and import as usual afterwards."""
    code = ("import sys; from pipeline.core.logs import quiet_third_party; quiet_third_party(); "
            "from backends.coreml.package import UNCALLED_INTEGRATIONS, coremltools; coremltools(); "
            "import coremltools.models; print([m for m in ('sklearn', 'transformers', 'executorch', "
            "'executorch.exir') if m in sys.modules]); "
            "print(all(sys.modules.get(m, True) is not None for m in UNCALLED_INTEGRATIONS))")  # None: unimportable
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    noise = [line for line in done.stderr.splitlines() if "Failed to load" in line]
    assert done.returncode == 0 and done.stdout.split() == ["[]", "True"], done.stdout + done.stderr
    assert len(noise) <= 1, done.stderr

"""The import graph of pipeline/ and models/, read with ast (every import statement, module-level or inside a
function): plumbing (pipeline/utils/) stands on nothing of the project, the training modes never import the
engine, no stage or model imports the dataset builders (pipeline/datasets/), and no module reaches itself again."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "models")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """{dotted name: file} of every module of pipeline/ and models/ (a package is its __init__.py)."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """The dotted names `path` (module `name`) imports, relative imports resolved; `from a import b` gives a.b and a."""
    out = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}; a name that is no module (a function, a class) counts as its
    module, a module of a package as itself."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for imp in imported_names(path, name):
            while imp and imp not in modules:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                edges.add(imp)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_utils_imports_no_project_module():
    """pipeline/utils/ imports nothing of the project outside itself (a name that is no module of it counts)."""
    utils = {name: path for name, path in project_modules().items() if name.split(".")[:2] == ["pipeline", "utils"]}
    assert "pipeline.utils" in utils and "pipeline.utils.errors" in utils
    found = sorted(
        f"{name} -> {n}"
        for name, path in utils.items()
        for n in imported_names(path, name)
        if n.split(".")[0] in PACKAGES and n.split(".")[:2] != ["pipeline", "utils"]
    )
    assert found == [], f"pipeline/utils/ imports {found}: plumbing must stand on nothing of the project"


def package(graph: dict, name: str) -> set[str]:
    """The modules of package `name` (itself and every module under it)."""
    return {m for m in graph if m == name or m.startswith(name + ".")}


def test_modes_stand_below_the_engine():
    """The training modes (pipeline/modes/) never import the engine (pipeline/engine/): what a mode needs of it is
    handed to it (its TrainContext; select_unlabelled's load_model)."""
    graph = import_graph()
    modes, engine = package(graph, "pipeline.modes"), package(graph, "pipeline.engine")
    assert len(modes) > 5 and engine
    found = sorted(f"{m} -> {sorted(graph[m] & engine)}" for m in modes if graph[m] & engine)
    assert found == [], "modes import the engine: " + "; ".join(found)


def test_no_stage_imports_the_dataset_builders():
    """pipeline/datasets/ builds data (make demo-data, make real-data); a stage reads a dataset folder and never
    imports a builder (a helper both need lives on a lower floor)."""
    graph = import_graph()
    assert "pipeline.datasets.demo" in graph and "pipeline.datasets.real" in graph
    builders = {m for m in graph if m == "pipeline.datasets" or m.startswith("pipeline.datasets.")}
    found = sorted(f"{m} -> {sorted(graph[m] & builders)}" for m in graph if m not in builders and graph[m] & builders)
    assert found == [], "modules outside pipeline/datasets/ import a dataset builder: " + "; ".join(found)


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "pipeline.utils" in graph and "models.registry" in graph and graph["pipeline.engine"]
    found = cycles(graph)
    assert found == [], "import cycles: " + "; ".join(
        " <-> ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found
    )


def test_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []

"""The import graph of the package: no stage package imports another, and no module imports itself
back through others. Read from the source (every import statement, function-level ones included),
so a lazy import cannot hide a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "services" / "domain_embed"
STAGES = {"curate", "synth", "split", "mine", "train", "evaluate", "export", "serve"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _exists(mod: str) -> bool:
    p = PKG.parent.joinpath(*mod.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        if "triton_model" in path.parts:  # runs inside Triton's python backend, not as part of the package
            continue
        mod = _module_name(path)
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" if _exists(f"{prefix}.{a.name}") else prefix for a in node.names]
            for t in targets:
                if t == "domain_embed" or t.startswith("domain_embed."):
                    while t and not _exists(t):
                        t = t.rpartition(".")[0]
                    if t and t != mod:
                        deps.add(t)
        graph[mod] = deps
    return graph


def _stage(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_no_stage_package_imports_another():
    bad = sorted(f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
                 if _stage(m) and _stage(d) and _stage(m) != _stage(d))
    assert not bad, "stage packages must share code through the lower floor (files, beir, ...):\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package importing its own submodules (its __init__ re-exporting them) is not a cycle
            if len(comp) > 1 and not any(all(c == p or c.startswith(p + ".") for c in comp) for p in comp):
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_sees_lazy_imports():
    # the stage registry imports every stage lazily, by name: the graph must still see real imports
    graph = import_graph()
    assert "domain_embed.config" in graph["domain_embed.rundir"]
    assert "domain_embed.beir" in graph["domain_embed.train.bi_encoder"]  # a function-level import

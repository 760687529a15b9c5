"""Structure of the package: jobs are leaves, and ``src/recsys`` has no import cycle.

Imports are read with ``ast`` from every ``import``/``from`` statement of a module, including
those inside functions and ``if TYPE_CHECKING:`` blocks: a lazy import still ties two modules
together (issue #16: ``jobs/train.py`` and ``jobs/train_ranker.py`` imported each other, a
lazy import hiding the cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Cycles known in code other slices of #16 are still changing, as frozensets of modules.
# Empty: none exists today; an entry must name exactly the modules of one cycle.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path, src: Path) -> str:
    """``src/recsys/bundle/reader.py`` -> ``recsys.bundle.reader`` (a package: its name)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(src: Path, package: str = "recsys") -> dict[str, Path]:
    """Every module of ``package`` under ``src`` by dotted name."""
    return {module_name(p, src): p for p in sorted((src / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` (at ``path``) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {target for target in found if target in known and target != name}


def import_graph(src: Path) -> dict[str, set[str]]:
    """Module -> the ``recsys`` modules it imports."""
    mods = modules(src)
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def job_imports(src: Path) -> dict[str, set[str]]:
    """Job module -> the other ``recsys.jobs`` modules it imports (should be none); the
    package ``recsys.jobs`` itself (a docstring) does not count."""
    graph = import_graph(src)
    return {
        name: {t for t in targets if t.startswith("recsys.jobs.")}
        for name, targets in graph.items()
        if name.startswith("recsys.jobs.")
    }


def test_no_job_imports_another_job() -> None:
    offending = {name: sorted(t) for name, t in job_imports(SRC).items() if t}
    assert not offending, (
        "jobs only map config to steps; shared code goes in the library "
        f"(recsys.training, recsys.runner, ...): {offending}"
    )


def test_recsys_has_no_import_cycle() -> None:
    found = [sorted(c) for c in cycles(import_graph(SRC)) if c not in KNOWN_CYCLES]
    assert not found, f"import cycles in src/recsys (lazy imports count): {found}"


def test_the_checks_see_lazy_imports(tmp_path: Path) -> None:
    """The checks can fail: a cycle closed by a function-level import, and a job importing a
    job lazily, are both found."""
    package = tmp_path / "recsys"
    (package / "jobs").mkdir(parents=True)
    for path in (package / "__init__.py", package / "jobs" / "__init__.py"):
        path.write_text("")
    (package / "jobs" / "a.py").write_text("from recsys.jobs import b\n")
    (package / "jobs" / "b.py").write_text("def main():\n    from .a import x\n")
    (package / "jobs" / "c.py").write_text("import recsys.lib\n")
    (package / "lib.py").write_text("")
    assert cycles(import_graph(tmp_path)) == [frozenset({"recsys.jobs.a", "recsys.jobs.b"})]
    assert job_imports(tmp_path) == {
        "recsys.jobs.a": {"recsys.jobs.b"},
        "recsys.jobs.b": {"recsys.jobs.a"},
        "recsys.jobs.c": set(),
    }

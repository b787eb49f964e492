"""The packages import one way: vdcore <- recipe <- service <- worker, and none of their modules import each other
in a circle. Imports are read from the source with ``ast``, those inside functions included, so a late import
cannot hide a back edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each package may import the ones before it, never one after it.
ORDER = ("vdcore", "recipe", "service", "worker")
# What the lower layers must not need: the method and the recipe run without a web server, queue or database.
FORBIDDEN = {
    "vdcore": {"fastapi", "starlette", "celery", "kombu", "redis", "sqlalchemy", "alembic", "psycopg", "httpx",
               "pydantic_settings", "uvicorn", "matplotlib"},
    "recipe": {"fastapi", "starlette", "celery", "kombu", "redis", "sqlalchemy", "alembic", "psycopg", "httpx",
               "pydantic_settings", "uvicorn"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, as absolute names; relative imports resolved against ``module``."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    """Each of the project's modules and the project modules it imports."""
    paths = [path for package in ORDER for path in sorted((ROOT / package).rglob("*.py"))]
    modules = {module_name(path): path for path in paths}
    graph = {}
    for module, path in modules.items():
        imported = imports_of(path.read_text(), module, path.name == "__init__.py")
        graph[module] = {name for name in imported if name in modules and name != module}
    return graph


def back_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {package: index for index, package in enumerate(ORDER)}
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if rank[target.split(".")[0]] > rank[module.split(".")[0]]
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of imports, each as the modules along it (a depth-first search's back edges)."""
    found, state = [], {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


# A package's __init__ that re-exports its own modules is an import of each of them, not a circle through them.
def without_package_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {module: {t for t in targets if not module.startswith(f"{t}.")} for module, targets in graph.items()}


GRAPH = project_graph()


def test_no_package_imports_a_later_one():
    assert back_imports(GRAPH) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(without_package_reexports(GRAPH)) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_the_method_and_the_recipe_need_no_web_queue_or_database(package):
    used = {
        name.split(".")[0]
        for path in (ROOT / package).rglob("*.py")
        for name in imports_of(path.read_text(), module_name(path), path.name == "__init__.py")
    }
    assert used & FORBIDDEN[package] == set()


def test_the_checks_catch_a_back_import_and_a_circle():
    graph = {"vdcore.a": {"service.b"}, "service.b": {"vdcore.a"}, "recipe.c": set()}
    assert back_imports(graph) == ["vdcore.a imports service.b"]
    assert cycles(graph) == [["service.b", "vdcore.a", "service.b"]]
    late = "def f():\n    from worker.tasks import app\n"
    assert "worker.tasks" in imports_of(late, "service.dispatch")
    assert imports_of("from .core import config\n", "service.api.main") == {"service.api.core",
                                                                            "service.api.core.config"}

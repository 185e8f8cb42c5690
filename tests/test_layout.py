"""The import rules of the layout (README "Layout"): the decisions and the
nouns import no I/O library, the installed package imports no dev tool, and
no module imports itself back through others."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cdnreq"

IO_LIBRARIES = ("aiohttp", "aiodns", "pycares", "aiosqlite", "sqlite3", "asyncpg", "asyncio")
DEV_TOOLS = ("devtools", "bench", "tests", "dnslib", "slapos", "pytest", "trustme", "hypothesis")
PURE = ("cdnreq.decide", "cdnreq.model", "cdnreq.validate")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module this file names in an import, wherever the import stands."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def test_the_decisions_and_the_nouns_import_no_io_library():
    modules = sorted(
        _module_name(p) for p in PACKAGE.rglob("*.py") if _module_name(p).startswith(PURE)
    )
    assert "cdnreq.decide.plan" in modules and "cdnreq.model" in modules
    program = f"""
import importlib, importlib.abc, sys
BLOCKED = {IO_LIBRARIES!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: a pure module must not need it")
for name in BLOCKED:
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[loaded]
sys.meta_path.insert(0, Block())
for name in {modules!r}:
    importlib.import_module(name)
"""
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_decisions_never_await():
    for path in (PACKAGE / "decide").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            assert not isinstance(node, (ast.Await, ast.AsyncFunctionDef, ast.AsyncFor, ast.AsyncWith)), (
                f"{path.relative_to(ROOT)}:{node.lineno} awaits: decisions are pure"
            )


def test_the_installed_package_imports_no_dev_tool():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for module in _imports(path):
            if module.split(".")[0] in DEV_TOOLS:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert found["include"] == ["cdnreq*"], "devtools/ and bench/ must stay out of the installed package"


def test_no_import_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for following in sorted(graph[node]):
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in on_stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == [], "\n".join(" <-> ".join(c) for c in cycles)


# Declarative tables may be longer: the configuration's models, the metrics' definitions.
LONG_ALLOWED = {"cdnreq/config.py", "cdnreq/metrics.py:Metrics.__init__"}


def test_no_module_over_about_400_lines_nor_function_over_about_60():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(ROOT))
        text = path.read_text()
        if text.count("\n") > 410 and name not in LONG_ALLOWED:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    owner = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
                    length = child.end_lineno - child.lineno + 1
                    if length > 65 and f"{name}:{owner}{child.name}" not in LONG_ALLOWED:
                        too_long.append(f"{name}:{child.lineno} {owner}{child.name}: {length} lines")
    assert too_long == []

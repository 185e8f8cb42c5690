"""The store's protocols (cdnreq/store/interface.py): both implementations
conform, and cdnreq names the SQLite engine only where it opens a store."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from cdnreq.reconcile.dry import DryStore
from cdnreq.store import Engine, InstanceReads, Store, TickStore

PACKAGE = Path(__file__).resolve().parent.parent / "cdnreq"
OPENERS = {  # the modules that open a store, and so name the engine; for nothing else
    "service/opening.py", "commands/import_legacy.py", "commands/orphans.py", "commands/plan.py",
}


def _members(protocol: type) -> dict[str, object]:
    names = {n for klass in protocol.__mro__ if klass not in (object,) for n in vars(klass)}
    return {n: getattr(protocol, n) for n in sorted(names) if not n.startswith("_") and n != "mro"}


def _conforms(implementation: type, protocol: type) -> list[str]:
    """What `implementation` lacks of `protocol`: a member, or a parameter a caller may pass."""
    problems = []
    for name, wanted in _members(protocol).items():
        have = getattr(implementation, name, None)
        if have is None:
            problems.append(f"{name}: missing")
            continue
        if isinstance(wanted, property):
            if not isinstance(have, property):
                problems.append(f"{name}: not a property")
            continue
        if not callable(wanted):
            continue
        if inspect.iscoroutinefunction(wanted) != inspect.iscoroutinefunction(have):
            problems.append(f"{name}: async in one, not in the other")
        given = inspect.signature(have).parameters
        anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in given.values())
        for parameter in inspect.signature(wanted).parameters.values():
            if parameter.name not in given and anything and parameter.kind is inspect.Parameter.KEYWORD_ONLY:
                continue  # taken by **kwargs
            if parameter.name not in given:
                problems.append(f"{name}: no parameter {parameter.name}")
            elif given[parameter.name].kind != parameter.kind:
                problems.append(f"{name}: {parameter.name} passed differently")
            elif (parameter.default is inspect.Parameter.empty) != (given[parameter.name].default is inspect.Parameter.empty):
                problems.append(f"{name}: {parameter.name} optional in one only")
    return problems


@pytest.mark.parametrize(("implementation", "protocol"), [
    (Store, Engine), (Store, TickStore), (Store, InstanceReads), (DryStore, TickStore),
], ids=["sqlite engine", "sqlite tick", "sqlite reads", "dry run"])
def test_each_store_implements_its_protocol(implementation: type, protocol: type) -> None:
    assert _conforms(implementation, protocol) == []


def test_a_missing_or_different_member_is_seen() -> None:
    """The check above can fail."""

    class Partial:
        async def load(self, everything: bool) -> dict:
            return {}

        def commit(self, **_: object) -> None:
            pass

    problems = _conforms(Partial, TickStore)
    assert "load_hosts: missing" in problems
    assert "commit: async in one, not in the other" in problems
    assert any(p.startswith("path") for p in problems)


async def test_an_open_store_is_an_engine_at_run_time(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "cdnreq.db")
    try:
        assert isinstance(store, Engine) and isinstance(DryStore(store), TickStore)
    finally:
        await store.close()


def _engine_uses(path: Path) -> list[str]:
    """How a module outside the store package names the engine: `Store.open…` or otherwise."""
    tree = ast.parse(path.read_text(), str(path))
    imported = any(
        isinstance(node, ast.ImportFrom) and node.module in ("cdnreq.store", "cdnreq.store.sqlite")
        and any(alias.name == "Store" for alias in node.names)
        for node in ast.walk(tree)
    ) or any(
        isinstance(node, (ast.Import, ast.ImportFrom)) and "cdnreq.store.sqlite" in ast.unparse(node)
        for node in ast.walk(tree)
    )
    if not imported:
        return []
    uses = []
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "Store":
            parent = parents.get(node)
            opening = isinstance(parent, ast.Attribute) and parent.attr in ("open", "open_snapshot")
            uses.append("open" if opening else f"line {node.lineno}")
    return uses or ["imported"]


def test_only_the_places_that_open_a_store_name_the_engine() -> None:
    """Everything else (the tick, the planner's shells, the service, explain,
    the operator) is written against the protocols, so a second engine only
    has to implement them and be opened."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("store/"):
            continue
        uses = _engine_uses(path)
        if uses and (relative not in OPENERS or set(uses) != {"open"}):
            found[relative] = uses
    assert found == {}

"""Layering (DESIGN.md §2): state/ is pure domain code, importable and testable without any I/O stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / "state"
IO_PACKAGES = {"bytewax", "confluent_kafka", "clickhouse_connect", "chdb"}
OUR_OUTER_LAYERS = {"flows", "connectors"}
ALLOWED_THIRD_PARTY = {"orjson"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Top-level module names imported by a file (absolute imports; relative ones stay inside state/)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
            found.append((node.lineno, str(node.args[0].value)))
    return found


STATE_FILES = sorted(STATE.rglob("*.py"))


def test_state_package_has_the_modules_of_the_layout() -> None:
    names = {p.relative_to(STATE).as_posix() for p in STATE_FILES}
    assert {"events.py", "rules.py", "shard.py", "customer.py", "moments.py", "detectors/__init__.py"} <= names


@pytest.mark.parametrize("path", STATE_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_state_module_imports_no_bytewax_kafka_or_clickhouse(path: Path) -> None:
    bad = [(line, name) for line, name in _imports(path) if name.split(".")[0] in IO_PACKAGES]
    assert bad == [], f"{path.relative_to(ROOT)} imports I/O packages: {bad}"


@pytest.mark.parametrize("path", STATE_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_state_module_imports_nothing_from_flows_or_connectors(path: Path) -> None:
    bad = [(line, name) for line, name in _imports(path) if name.split(".")[0] in OUR_OUTER_LAYERS]
    assert bad == [], f"{path.relative_to(ROOT)} imports outer layers: {bad}"


@pytest.mark.parametrize("path", STATE_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_state_module_uses_only_the_standard_library_and_orjson(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY | {"state", "__future__"}
    bad = [(line, name) for line, name in _imports(path) if name.split(".")[0] not in allowed]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_importing_state_loads_no_io_package() -> None:
    code = (
        "import sys\n"
        "import state.shard, state.routing, state.events, state.rules, state.outputs, state.feedback\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(IO_PACKAGES | OUR_OUTER_LAYERS)!r})\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


def test_the_scan_sees_imports_of_every_form(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import bytewax.operators as op\nfrom confluent_kafka import Producer\n"
                     "import importlib\nm = importlib.import_module('chdb')\nfrom . import sibling\n")
    assert [name for _, name in _imports(probe)] == ["bytewax.operators", "confluent_kafka", "importlib", "chdb"]


# Modules hold one concern each (issue 15): a module past this has grown a second one; split it by concern.
MAX_MODULE_LINES = 450
OUTER_FILES = sorted(p for layer in sorted(OUR_OUTER_LAYERS) for p in (ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("path", OUTER_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_connectors_and_flows_modules_stay_under_the_size_budget(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, (f"{path.relative_to(ROOT)} has {lines} lines, over {MAX_MODULE_LINES}: "
                                       "split it by concern")


def test_the_size_budget_sees_every_package() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in OUTER_FILES}
    assert {"connectors/kafka/source.py", "connectors/clickhouse/sink.py", "connectors/simulator/traffic.py",
            "flows/metrics.py", "flows/cli.py"} <= names


def _state_graph() -> dict[str, set[str]]:
    """state/ module -> the state/ modules it imports (every import, TYPE_CHECKING ones included)."""
    graph: dict[str, set[str]] = {}
    for path in STATE_FILES:
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t.split(".")[0] == "state"}
    return {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """Return one import cycle (its modules in order, the first repeated at the end), or [] when none."""
    done: set[str] = set()

    def visit(m: str, stack: list[str]) -> list[str]:
        if m in stack:
            return [*stack[stack.index(m):], m]
        if m in done:
            return []
        for t in sorted(graph[m]):
            found = visit(t, [*stack, m])
            if found:
                return found
        done.add(m)
        return []

    for m in sorted(graph):
        found = visit(m, [])
        if found:
            return found
    return []


def test_state_modules_import_each_other_without_cycles() -> None:
    assert _cycle(_state_graph()) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert _cycle({"state.a": {"state.b"}, "state.b": {"state.c"}, "state.c": {"state.a"}}) == [
        "state.a", "state.b", "state.c", "state.a"]


MAX_STATE_MODULE_LINES = 400  # issue 14: modules split by concern, none over ~400 lines


@pytest.mark.parametrize("path", STATE_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_state_module_stays_within_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_STATE_MODULE_LINES, (f"{path.relative_to(ROOT)} has {lines} lines (at most "
                                             f"{MAX_STATE_MODULE_LINES}): split it by concern")


@pytest.mark.parametrize("name", ["reference.py", "generic_reference.py"])
def test_the_simulators_oracles_import_nothing_from_state(name: str) -> None:
    # The ground truth is evidence about state/ only if it is computed without it.
    path = ROOT / "connectors" / "simulator" / name
    assert [(n, m) for n, m in _imports(path) if m.split(".")[0] == "state"] == []

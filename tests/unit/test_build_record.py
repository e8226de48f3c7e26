"""The build record (state/_build.json) names the sources mypyc read, so an edit during a build shows as stale."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _setup_module(tree: Path) -> dict[str, Any]:
    """setup.py's functions, run from ``tree`` (without its last statement, which would start a build)."""
    code = (tree / "setup.py").read_text()
    code = code[: code.rindex("\nsetup(")]
    ns: dict[str, Any] = {"__file__": str(tree / "setup.py"), "__name__": "cx_setup_under_test"}
    exec(compile(code, str(tree / "setup.py"), "exec"), ns)  # noqa: S102 - the project's own build script
    return ns


def _build_with(tree: Path, mypycify: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run setup.py's ``ext_modules`` in ``tree`` with ``mypycify`` standing in for mypyc's (a C toolchain assumed)."""
    fake = types.ModuleType("mypyc.build")
    fake.mypycify = mypycify  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mypyc.build", fake)
    monkeypatch.delenv("CX_PURE_PYTHON", raising=False)
    ns = _setup_module(tree)
    monkeypatch.setitem(ns, "_missing_toolchain", lambda: "")
    ns["ext_modules"]()
    return ns


def test_a_source_edited_while_mypyc_translates_is_stale_at_import(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the digests were taken after mypycify returned, so an edit made while it ran was recorded as
    # built, and the compiled modules of the old source ran as if current (a helper's rebuild was then skipped).
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "state", tree / "state", ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.json"))
    shutil.copy(ROOT / "setup.py", tree / "setup.py")
    edited = tree / "state" / "moments.py"

    def mypycify(sources: list[str], **_kw: Any) -> list[Any]:
        assert "state/moments.py" in sources
        edited.write_text(edited.read_text() + "\n# edited while mypyc ran\n")
        return []

    ns = _build_with(tree, mypycify, monkeypatch)
    record = json.loads((tree / "state" / "_build.json").read_text())
    # Until the C build has finished, the record says so (a build stopped half-way is built again by setup.sh).
    assert not record["compiled"]
    assert record["reason"] == ns["build_info"].UNFINISHED
    import importlib.machinery

    (tree / "state" / f"{ns['build_info'].LIBRARY}{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"lib")
    ns["_finished"]()
    record = json.loads((tree / "state" / "_build.json").read_text())
    assert record["compiled"]
    assert record["library"] == ns["build_info"].library_digest(tree / "state")
    now = ns["build_info"].digests(tree / "state")
    assert record["digests"]["moments.py"] != now["moments.py"]  # so the import finds it stale
    assert {k: v for k, v in record["digests"].items() if k != "moments.py"} == \
        {k: v for k, v in now.items() if k != "moments.py"}


def test_a_build_removes_the_compiled_modules_of_an_earlier_one_first(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # A subpackage's __init__ compiled by an earlier build, no longer compiled now, stayed beside its source and
    # was imported in its place.
    import importlib.machinery

    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "state", tree / "state", ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.json"))
    shutil.copy(ROOT / "setup.py", tree / "setup.py")
    stale = tree / "state" / "generic" / f"__init__{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    stale.write_bytes(b"\x7fELF")
    seen: list[list[str]] = []

    def mypycify(sources: list[str], **_kw: Any) -> list[Any]:
        seen.append(sources)
        assert not stale.exists()  # gone before the new build's modules are written
        return []

    _build_with(tree, mypycify, monkeypatch)
    assert seen
    assert not [s for s in seen[0] if s.endswith("__init__.py")]

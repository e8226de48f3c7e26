"""Which build of state/ this process runs: mypyc-compiled modules or the pure-Python sources (issue 18).

``setup.py`` compiles state/ with mypyc when it can and records, in ``state/_build.json``, a digest of each
source it compiled. The compiled modules (``.so`` files next to the sources in an editable install) would
otherwise be imported in preference to the ``.py`` files even after an edit, so ``choose()`` (called by
``state/__init__.py`` before any other state module loads) compares the digests: on any difference, or with
``CX_PURE_PYTHON=1``, it puts a finder ahead of the others that loads state's submodules from their sources.
This module and ``state/__init__.py`` are never compiled. Standard library only: setup.py loads it by path.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Final, NamedTuple

MANIFEST: Final = "_build.json"
# The group library mypyc puts all compiled code in (``mypycify(group_name="state.compiled")``); the per-module
# extensions only load it. Its digest is recorded once the C build has finished.
LIBRARY: Final = "compiled__mypyc"
# The record's reason while a C build runs: seen at import, the build was stopped before it finished.
UNFINISHED: Final = "the last build of state/ did not finish"
# Modules that decide the build, so they always run from source (the package's own ``__init__.py`` and this one),
# and every subpackage's ``__init__.py``: compiled, its ``__path__`` pointed at ``state/state/<sub>``, so a first
# ``import state.generic.base`` failed (a package whose ``__init__`` imports its modules hid it).
NOT_COMPILED: Final = frozenset({"__init__.py", "_build.py"})
PURE_ENV: Final = "CX_PURE_PYTHON"


class Build(NamedTuple):
    """The build this process runs: ``compiled``, whether compiled sources are ``stale``, and one line saying so."""

    compiled: bool
    stale: bool
    line: str


def sources(root: Path) -> list[Path]:
    """The modules of the package at ``root`` that mypyc compiles, in a stable order."""
    # Files only: an editor's lock (``.#journey.py``, a dangling link) or a directory named ``*.py`` made every
    # import of state fail once compiled modules were there (their digests were read).
    return sorted(p for p in root.rglob("*.py") if p.name != "__init__.py" and (p.name not in NOT_COMPILED
                                                                               or p.parent != root)
                  and p.is_file())


def digests(root: Path) -> dict[str, str]:
    """SHA-256 of each compiled module's source, keyed by its path relative to ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sources(root)}


def compiled_files(root: Path) -> list[Path]:
    """Extension modules left in the package folder by a compiled build (this interpreter's suffixes)."""
    return sorted({p for suffix in importlib.machinery.EXTENSION_SUFFIXES for p in root.rglob(f"*{suffix}")})


def library_digest(root: Path) -> str:
    """SHA-256 of the group library (``LIBRARY``) for this interpreter, or ``""`` when there is none."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        lib = root / f"{LIBRARY}{suffix}"
        if lib.is_file():
            return hashlib.sha256(lib.read_bytes()).hexdigest()
    return ""


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds ``state.*`` modules as ``.py`` sources only, so compiled modules beside them are never loaded."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("state.") or path is None:
            return None
        for entry in path:
            finder = importlib.machinery.FileFinder(
                entry, (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES))
            spec = finder.find_spec(fullname)
            if spec is not None:
                return spec
        # Not None: the next finders would load a compiled module left where its source was removed.
        raise ModuleNotFoundError(f"No module named {fullname!r} (state/ runs as pure Python: only sources load)",
                                  name=fullname)


def _changed(root: Path) -> list[str]:
    """Sources that differ from those compiled (added, removed or edited); every one when no record is readable;
    or why the compiled modules are not those of the last finished build."""
    try:
        record = json.loads((root / MANIFEST).read_text())
        built: dict[str, str] = record["digests"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["(no readable state/_build.json)"]
    if not isinstance(built, dict):
        return ["(no readable state/_build.json)"]
    if record.get("reason") == UNFINISHED:
        return [f"({UNFINISHED})"]
    # All compiled code is in the group library: one missing, or another build's (copied from another checkout or
    # version), is not what the sources say, whatever the per-module files.
    if library_digest(root) != record.get("library"):
        return [f"(state/{LIBRARY}.*.so is missing or not the one this build made)"]
    now = digests(root)
    changed = {name for name in built.keys() | now.keys() if built.get(name) != now.get(name)}
    # A source whose compiled module is gone would load from source beside compiled ones that import their own
    # copy of it (two classes of one name in a process).
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    changed |= {p.relative_to(root).as_posix() for p in sources(root)
                if not any(p.with_name(p.stem + sfx).is_file() for sfx in suffixes)}
    return sorted(changed)


def decide(root: Path, environ: Mapping[str, str]) -> Build:
    """The build the package at ``root`` runs under ``environ``: compiled only if its compiled modules are fresh."""
    stale: list[str] = _changed(root) if compiled_files(root) else []
    if environ.get(PURE_ENV) == "1":
        return Build(False, bool(stale), f"state/ runs as pure Python ({PURE_ENV}=1)")
    if stale:
        rebuild = "rebuild with `bash infra/dev/setup.sh` or `pip install -e .`"
        if stale[0].startswith("("):  # not a source: the record, an unfinished build, the group library
            return Build(False, True, f"state/ runs as pure Python: {stale[0][1:-1]}; {rebuild}")
        shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        return Build(False, True, f"state/ runs as pure Python: its sources changed since they were compiled "
                                  f"({shown}); {rebuild}")
    if compiled_files(root):
        return Build(True, False, f"state/ compiled with mypyc {_recorded(root, 'mypyc')}")
    reason = _recorded(root, "reason")
    return Build(False, False, "state/ runs as pure Python ("
                 + ("not compiled: install with `pip install -e .`" if reason == "?" else reason) + ")")


def rebuild_reason(root: Path, environ: Mapping[str, str]) -> str:
    """Why ``pip install -e .`` should run again for the package at ``root`` (setup.sh), or ``""``."""
    if not (root / MANIFEST).is_file():
        return "not built by setup.py yet"
    if _recorded(root, "reason") == UNFINISHED:
        return UNFINISHED
    if decide(root, environ).stale:
        return "its sources changed since they were compiled"
    if environ.get(PURE_ENV) != "1" and _recorded(root, "reason") == f"{PURE_ENV}=1":
        return f"it was installed as pure Python with {PURE_ENV}=1"
    return ""


def choose(root: Path) -> Build:
    """Decide the build for this process and, when it is pure Python, make state's imports load the sources."""
    build = decide(root, os.environ)
    if not build.compiled and not any(isinstance(f, _SourceOnly) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceOnly())
    return build


def _recorded(root: Path, field: str) -> str:
    """A field of the record setup.py wrote, or ``"?"``."""
    try:
        return str(json.loads((root / MANIFEST).read_text())[field])
    except (OSError, ValueError, KeyError, TypeError):
        return "?"

"""Build hook: state/ compiled with mypyc when a C compiler and Python's headers are present (issue 18).

Everything else about the package is in pyproject.toml. Without a compiler or headers, with
``CX_PURE_PYTHON=1``, or when the C build fails, the package installs as pure Python and says so in one
line; compiled modules of an earlier build are then removed so they cannot shadow the sources.
``state/_build.json`` records what was built and a digest of every compiled source (``state/_build.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
STATE = ROOT / "state"
_spec = importlib.util.spec_from_file_location("_cx_state_build", STATE / "_build.py")
assert _spec is not None
assert _spec.loader is not None
build_info = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_info)


def _say(line: str) -> None:
    print(f"cx-moments build: {line}", file=sys.stderr, flush=True)


def _record(compiled: bool, reason: str = "", mypyc: str = "", digests: dict[str, str] | None = None,
            library: str = "") -> None:
    (STATE / build_info.MANIFEST).write_text(json.dumps(
        {"compiled": compiled, "reason": reason, "mypyc": mypyc, "library": library,
         "digests": digests if digests is not None else build_info.digests(STATE)},
        indent=1, sort_keys=True) + "\n")


# What the C build finishes (BuildExt.run): the digests and mypyc version recorded once it has.
_PENDING: dict[str, Any] = {}


def _pure(reason: str) -> list[Any]:
    """No extension modules: remove those of an earlier build, record why, say it once."""
    for stale in build_info.compiled_files(STATE):
        stale.unlink(missing_ok=True)
    _record(False, reason)
    _say(f"state/ installed as pure Python ({reason})")
    return []


def _missing_toolchain() -> str:
    """What the C build lacks on this machine, or ``""``."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler: {cc!r} not found"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        return f"no Python headers: {headers} not found"
    return ""


def ext_modules() -> list[Any]:
    """The mypyc extensions of state/, or none (and why, in one line)."""
    if os.environ.get(build_info.PURE_ENV) == "1":
        return _pure(f"{build_info.PURE_ENV}=1")
    missing = _missing_toolchain()
    if missing:
        return _pure(missing)
    try:
        import mypy.version  # noqa: PLC0415  # a build requirement, pinned in pyproject.toml
        from mypyc.build import mypycify  # noqa: PLC0415
    except ImportError as e:
        return _pure(f"mypyc not importable: {e}")
    # An earlier build's modules go first: one whose source is no longer compiled (a subpackage's __init__.py)
    # would otherwise stay beside it and be imported in its place.
    for old in build_info.compiled_files(STATE):
        old.unlink(missing_ok=True)
    sources = [p.relative_to(ROOT).as_posix() for p in build_info.sources(STATE)]
    # The digests of the sources as mypyc is about to read them: a source edited while it translates (a minute)
    # must show as stale at import, not be recorded as what the compiled modules were built from.
    read = build_info.digests(STATE)
    # The group's shared library goes inside the package (state/compiled__mypyc.*.so), where the editable
    # install's finder looks, rather than at the top level of the tree.
    try:
        exts: list[Any] = mypycify(sources, opt_level="3", group_name="state.compiled")
    except (Exception, SystemExit) as e:  # mypy's own errors exit; the type check (test.sh) reports them
        return _pure(f"mypyc refused state/: {e}")
    # Until the C build (minutes) has finished, the record says it has not: a build stopped half-way leaves
    # state/ pure Python, saying why, and setup.sh builds it again.
    _record(False, build_info.UNFINISHED, mypyc=mypy.version.__version__, digests=read)
    _PENDING.update(mypyc=mypy.version.__version__, digests=read)
    return exts


class BuildExt(build_ext):
    """The C build; a failure falls back to pure Python instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001  # compiler errors come as several distutils/setuptools types
            _pure(f"the C build failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            return
        _finished()


def _finished() -> None:
    """The C build has finished: record the compiled modules as built (with their group library's digest)."""
    if not _PENDING:
        return
    library = build_info.library_digest(STATE)
    if not library:
        _pure(f"the C build left no state/{build_info.LIBRARY} library")
        return
    _record(True, mypyc=_PENDING["mypyc"], digests=_PENDING["digests"], library=library)
    _say(f"state/ compiled with mypyc {_PENDING['mypyc']}")


# pip runs this file for metadata too (egg_info, dist_info): only a build compiles or records anything.
_BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}
setup(ext_modules=ext_modules() if _BUILDS & set(sys.argv[1:]) else [], cmdclass={"build_ext": BuildExt})

"""Contributor scripts do what they promise: test.sh type-checks state/, setup.sh picks a Python Bytewax supports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "infra" / "dev" / "setup.sh"


def _copy_project(dest: Path) -> Path:
    """Copy what test.sh looks at into ``dest``, sharing the real .venv, with one trivial test."""
    for name in ("state", "flows", "connectors", "infra"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    # Older than setup.sh's install stamp: the copy must never re-install the shared .venv from here.
    os.utime(dest / "pyproject.toml", (0, 0))
    (dest / ".venv").symlink_to(ROOT / ".venv")
    (dest / "tests").mkdir()
    (dest / "tests" / "test_placeholder.py").write_text("def test_placeholder() -> None:\n    assert True\n")
    return dest


def _test_sh(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "infra/dev/test.sh", "-q", "-p", "no:cacheprovider"],
        cwd=project, capture_output=True, text=True, timeout=600, check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad_code",
    [
        pytest.param('def broken() -> int:\n    return "not an int"\n', id="type_error"),
        # Only mypy's strict mode (state/ alone) refuses a function without annotations.
        pytest.param("def untyped(x):\n    return x\n", id="missing_annotations"),
    ],
)
def test_test_sh_fails_on_a_type_error_in_state_before_running_pytest(tmp_path: Path, bad_code: str) -> None:
    project = _copy_project(tmp_path)
    with (project / "state" / "moments.py").open("a") as f:
        f.write("\n\n" + bad_code)
    res = _test_sh(project)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "state/moments.py" in out, out
    assert "error:" in out, out
    assert "1 passed" not in out, out  # it stopped before pytest


@pytest.mark.slow
def test_test_sh_passes_on_the_unchanged_code(tmp_path: Path) -> None:
    # The control for the test above: the failure comes from the injected error, not from the copy.
    res = _test_sh(_copy_project(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout


def _fake_python(bin_dir: Path, name: str, version: tuple[int, int]) -> None:
    """Write a ``name`` interpreter that runs setup.sh's ``-c`` checks as Python ``version`` would."""
    major, minor = version
    script = bin_dir / name
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "Python {major}.{minor}.0"; exit 0; fi\n'
        f'if [ "$1" = "-c" ]; then exec {sys.executable} -c '
        f'"import sys; sys.version_info = ({major}, {minor}, 0, \'final\', 0); exec(sys.argv[1])" "$2"; fi\n'
        "exit 2\n"
    )
    script.chmod(0o755)


def _which_python(tmp_path: Path, pythons: dict[str, tuple[int, int]],
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, version in pythons.items():
        _fake_python(bin_dir, name, version)
    # Only the fakes and the few tools setup.sh needs before it picks: no real python3 on PATH.
    for tool in ("dirname", "head"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(SETUP), "--print-python"],
        env={"PATH": str(bin_dir), **(env or {})}, capture_output=True, text=True, timeout=60, check=False,
    )


def test_setup_uses_python3_when_it_is_supported(tmp_path: Path) -> None:
    res = _which_python(tmp_path, {"python3": (3, 11), "python3.12": (3, 12)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "bin" / "python3")


def test_setup_falls_back_to_python3_12_when_python3_is_too_new(tmp_path: Path) -> None:
    res = _which_python(tmp_path, {"python3": (3, 13), "python3.12": (3, 12), "python3.11": (3, 11)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "bin" / "python3.12")


def test_setup_falls_back_to_python3_11(tmp_path: Path) -> None:
    res = _which_python(tmp_path, {"python3": (3, 13), "python3.11": (3, 11)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "bin" / "python3.11")


def test_setup_without_a_supported_python_says_in_one_line_what_to_install(tmp_path: Path) -> None:
    res = _which_python(tmp_path, {"python3": (3, 13)})
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Python 3.11 or 3.12" in lines[0]
    assert "python3 is Python 3.13.0" in lines[0]
    assert "install python3.12" in lines[0]


def test_setup_refuses_an_unsupported_python_given_in_the_environment(tmp_path: Path) -> None:
    res = _which_python(tmp_path, {"python3": (3, 12), "python3.13": (3, 13)},
                        env={"PYTHON": str(tmp_path / "bin" / "python3.13")})
    assert res.returncode == 1
    assert "PYTHON=" in res.stderr
    assert "not Python 3.11 or 3.12" in res.stderr


def test_requires_python_matches_what_setup_accepts() -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"] == ">=3.11,<3.13"

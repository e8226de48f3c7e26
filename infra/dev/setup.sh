#!/usr/bin/env bash
# Idempotent set-up on a fresh machine with Python 3.11 or 3.12 and the OS package manager:
# a virtualenv in .venv with cx-moments installed editable; with --test also the test
# extras and the Debian tools the tests use as independent parts (kcat, promtool).
set -euo pipefail
cd "$(dirname "$0")/../.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

# Bytewax 0.21.1 publishes wheels for CPython 3.11 and 3.12 only: a newer python3 (3.13 on Debian 13,
# recent Fedora, Homebrew) fails inside pip, so look for a supported interpreter next to it.
supported() { "$1" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)' 2>/dev/null; }
if [[ -n "${PYTHON:-}" ]]; then
  supported "$PYTHON" || {
    echo "setup: PYTHON=$PYTHON is not Python 3.11 or 3.12 (Bytewax 0.21.1 has no wheels for other versions)" >&2
    exit 1
  }
  PY="$PYTHON"
else
  PY=""
  for candidate in python3 python3.12 python3.11; do
    if supported "$candidate"; then PY="$candidate"; break; fi
  done
  if [[ -z "$PY" ]]; then
    found=""
    command -v python3 >/dev/null && found=$(python3 --version 2>&1 | head -n1 || true)
    echo "setup: need Python 3.11 or 3.12 (python3 is ${found:-missing}): install python3.12 (apt install python3.12-venv, brew install python@3.12, pyenv install 3.12) or set PYTHON=/path/to/python3.12" >&2
    exit 1
  fi
fi
# --print-python: only say which interpreter the virtualenv would be made with.
if [[ "${1:-}" == "--print-python" ]]; then command -v "$PY"; exit 0; fi
# A .venv left by an unsupported interpreter (an earlier run with python3 = 3.13) cannot install Bytewax.
if [[ -x .venv/bin/python ]] && ! supported .venv/bin/python; then
  echo "setup: .venv uses $(.venv/bin/python --version 2>&1); re-creating it with $PY" >&2
  rm -rf .venv
fi

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  command -v apt-get >/dev/null || { echo "setup: no apt-get; install $* with your package manager" >&2; return 1; }
  if [[ ! -f /tmp/.cx-apt-updated ]]; then as_root apt-get update -qq && touch /tmp/.cx-apt-updated; fi
  # policy-rc.d keeps packages such as prometheus from trying to start services.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [[ ! -x .venv/bin/python ]]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi
# state/ is compiled with mypyc when a C compiler and Python's headers are present (setup.py; pure Python
# otherwise): install them where the OS package manager can (Debian's own Pythons; not pyenv or Homebrew ones).
if [[ "${CX_PURE_PYTHON:-}" != "1" ]]; then
  build_need=()
  command -v cc >/dev/null || command -v gcc >/dev/null || build_need+=(gcc libc6-dev)
  include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  [[ -f "$include/Python.h" || "$include" != /usr/include/* ]] || build_need+=("$(basename "$include")-dev")
  if ((${#build_need[@]})); then
    echo "setup: installing ${build_need[*]} (to compile state/ with mypyc)" >&2
    apt_install "${build_need[@]}" || echo "setup: could not install ${build_need[*]}: state/ will be pure Python" >&2
  fi
fi
stamp=".venv/.cx-installed-$want_test"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || setup.py -nt "$stamp" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if [[ $want_test -eq 1 ]]; then
    .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
  else
    .venv/bin/python -m pip install -q -e . 2>&1 | grep -v "is ignored" || true
  fi
  .venv/bin/python -c "import bytewax, confluent_kafka, orjson, prometheus_client, clickhouse_connect, chdb" \
    || { echo "setup: Python packages failed to install" >&2; exit 1; }
  touch "$stamp"
fi
# Compiled modules built from older sources would run as pure Python (state/_build.py): rebuild them. Only in
# the project itself (setup.py beside it): a partial copy sharing its .venv must not re-install it from there.
why=""
[[ -f setup.py ]] && why=$(.venv/bin/python -c 'import os, state, state._build as b
print(b.rebuild_reason(b.Path(state.__file__).parent, os.environ))')
if [[ -n "$why" ]]; then
  echo "setup: building state/ again ($why)" >&2
  .venv/bin/python -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored" || true
fi
echo "setup: $(.venv/bin/python -c 'import state; print(state.BUILD.line)')" >&2

if [[ $want_test -eq 1 ]]; then
  need=()
  command -v kcat >/dev/null || need+=(kcat)
  command -v promtool >/dev/null || need+=(prometheus)
  if ((${#need[@]})); then
    echo "setup: installing ${need[*]} (Debian packages used by the tests)" >&2
    apt_install "${need[@]}"
  fi
fi

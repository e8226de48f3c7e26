#!/usr/bin/env bash
# Idempotent set-up on a fresh machine with Python 3.11+ and the OS package manager:
# a virtualenv in .venv with cx-moments installed editable; with --test also the test
# extras and the Debian tools the tests use as independent parts (kcat, promtool).
set -euo pipefail
cd "$(dirname "$0")/../.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "setup: need Python 3.11+ as '$PY' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
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
stamp=".venv/.cx-installed-$want_test"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
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

if [[ $want_test -eq 1 ]]; then
  need=()
  command -v kcat >/dev/null || need+=(kcat)
  command -v promtool >/dev/null || need+=(prometheus)
  if ((${#need[@]})); then
    echo "setup: installing ${need[*]} (Debian packages used by the tests)" >&2
    apt_install "${need[@]}"
  fi
fi

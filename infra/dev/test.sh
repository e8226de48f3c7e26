#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: lint, type check, then pytest. Exit 5 (no tests) is a failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
bash infra/dev/setup.sh --test || exit 1
.venv/bin/ruff check . || exit 1
# Strict on state/, mypy's default checks on flows/ and connectors/ (pyproject.toml [tool.mypy]).
.venv/bin/mypy state flows connectors || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
# The whole suite ran on the build setup.sh made (state/ compiled with mypyc where it could be). With no
# arguments (CI), the unit and property tests run again on state/'s pure-Python sources, the fallback build
# (not the slow ones, test_dev_checks': they check the scripts, the same on either build).
if [[ $# -eq 0 && $rc -eq 0 ]] && .venv/bin/python -c 'import state, sys; sys.exit(not state.BUILD.compiled)'; then
  echo "test: unit and property tests again on pure-Python state/ (CX_PURE_PYTHON=1)" >&2
  CX_PURE_PYTHON=1 .venv/bin/python -m pytest tests/unit tests/property -q -m "not slow"
  rc=$?
fi
exit $rc

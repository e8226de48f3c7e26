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
exit $rc

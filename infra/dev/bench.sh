#!/usr/bin/env bash
# Set up (if needed) and run every benchmark; figures go to benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash infra/dev/setup.sh --test
.venv/bin/python -m benchmarks.run_all "$@"

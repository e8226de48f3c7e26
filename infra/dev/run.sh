#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded defaults: the simulator as input,
# embedded ClickHouse (chdb:///./data/cx.chdb) as the sink, metrics on :9464; then print the reports.
# Extra arguments go to `moments run` (try --help).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash infra/dev/setup.sh
.venv/bin/moments run "$@"
if [[ " $* " != *" --sink "* ]]; then
  .venv/bin/moments report
  .venv/bin/moments report rules   # contact-policy decisions and sent vs hold-out per rule
fi

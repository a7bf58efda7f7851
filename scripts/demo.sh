#!/usr/bin/env bash
# Set up .venv and run the demo (extra arguments go to `anyloader demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/anyloader demo "$@"

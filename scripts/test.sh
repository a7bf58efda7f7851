#!/usr/bin/env bash
# Set up .venv with the test extras, then lint, type-check and run the whole suite
# on Python 3.11, and its core on 3.10, 3.12 and 3.13 (scripts/pythons.sh), side by side.
# Arguments go to pytest; with any, only that run (no other Pythons).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict src
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
# The other Pythons' core suites run beside the whole suite: neither keeps both cores
# busy alone, and the suite passes beside two busy loops. Their report follows.
others=$(mktemp)
trap 'rm -f "$others"' EXIT
bash scripts/pythons.sh > "$others" 2>&1 &
pythons=$!
status=0
.venv/bin/python -m pytest || status=$?
wait "$pythons" || status=1
cat "$others"
exit $status

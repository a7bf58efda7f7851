#!/usr/bin/env bash
# Set up .venv with the test extras, then lint, type-check and run the whole suite
# on Python 3.11, and its core on 3.10, 3.12 and 3.13 (scripts/pythons.sh).
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
.venv/bin/python -m pytest
bash scripts/pythons.sh

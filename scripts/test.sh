#!/usr/bin/env bash
# Set up .venv with the test extras, then lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict src
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Create .venv and install anyloader with the given extras (default: none).
# torch==2.13.0 goes in first: that CPU build is on this machine's disk, while
# a bare "torch" requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() {
    # This machine's pip configuration names local indexes that may be absent;
    # its warnings about them are noise, everything else is shown.
    .venv/bin/python -m pip --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
pip install --quiet --upgrade pip
pip install --quiet "torch==2.13.0"
pip install --quiet -e ".${extras:+[$extras]}"

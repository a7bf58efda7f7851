#!/usr/bin/env bash
# Create .venv and install anyloader with the given extras (default: none).
# torch==2.13.0 goes in first: that CPU build is on this machine's disk, while
# a bare "torch" requirement would pull a multi-GB CUDA build.
#
# Idempotent: .venv/anyloader-setup.stamp records a hash of what the install
# depends on (pyproject.toml, this script, the Python version) and the extras
# installed with it; when they cover this call, pip is not run at all.
# anyloader itself is installed editable, so source changes need no reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
stamp=.venv/anyloader-setup.stamp
[ -x .venv/bin/python ] || "$python" -m venv .venv

inputs=$(cat pyproject.toml scripts/setup.sh; .venv/bin/python -c 'import sys; print(sys.version)')
hash=$(printf '%s' "$inputs" | sha256sum | cut -d' ' -f1)
installed=""
if [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$hash" ]; then
    installed=$(sed -n 2p "$stamp")
fi
covered=yes
for extra in ${extras//,/ }; do
    case ",$installed," in *",$extra,"*) ;; *) covered=no ;; esac
done
if [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$hash" ] && [ "$covered" = yes ]; then
    echo "setup: .venv is up to date with pyproject.toml (extras: ${installed:-none}); pip not run"
    exit 0
fi

pip() {
    # This machine's pip configuration names local indexes that may be absent;
    # its warnings about them are noise, everything else is shown.
    .venv/bin/python -m pip --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
pip install --quiet --upgrade pip
pip install --quiet "torch==2.13.0"
pip install --quiet -e ".${extras:+[$extras]}"

# Record what is installed now: the extras of this call, plus those of an earlier
# call with the same inputs (an install adds to what is there).
union=$(printf '%s\n' ${installed//,/ } ${extras//,/ } | sort -u | paste -sd, -)
printf '%s\n%s\n' "$hash" "$union" > "$stamp"

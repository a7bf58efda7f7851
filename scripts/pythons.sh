#!/usr/bin/env bash
# Run the core of the suite on every other Python that pyproject.toml claims
# (3.10, 3.12, 3.13; the whole suite runs on 3.11 in scripts/test.sh).
#
# Only Python 3.11 has a CPU build of torch on this machine's disk; for the
# others PyPI has only torch's CUDA build, whose import needs NVIDIA's libraries
# (about 2.5 GB of wheels, used here on the CPU). uv installs them once into its
# cache and hardlinks them into each .venv-3.X (pip would unpack 4.7 GB a venv),
# leaving out what torch never loads on the CPU (scripts/cpu-only-excludes.txt).
# Idempotent: a venv is rebuilt only when pyproject.toml or this script change.
# An interpreter that is not installed is reported and skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=.venv/bin/uv  # from the test extra (scripts/setup.sh test)
export SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}  # uv ignores pip.conf
# Compiled bytecode makes each torch import (every test, worker and rank) 2-3x faster.
unset PYTHONDONTWRITEBYTECODE

# The core: the plan and its order, checkpoint state, the lifecycle models, Ctrl-C,
# batch memory, decoding, and epochs through real DataLoader worker processes.
core=(
    tests/plan/test_plan.py
    tests/plan/test_order.py
    tests/plan/test_state.py
    tests/test_lifecycle_model.py
    tests/test_loader_model.py
    tests/batch/test_batch_memory.py
    tests/decode/test_decode.py
    tests/plan/test_epochs.py
    tests/test_lifecycle.py::test_ctrl_c_stops_the_epoch_and_the_process_exits_cleanly
    tests/test_regressions_16.py
)
# Spawned DataLoader workers import torch afresh (its CUDA build here: 3-9 s each); the
# fork variants of the same tests stay, the spawn ones run on 3.11.
skip=(
    --deselect "tests/plan/test_epochs.py::test_each_iteration_reads_the_next_epoch_unless_set_epoch_chose_one[spawn]"
    --deselect "tests/plan/test_epochs.py::test_each_iteration_reads_the_next_epoch_unless_set_epoch_chose_one[spawn-persistent]"
    --deselect "tests/test_regressions_16.py::test_an_ordered_view_over_workers_warns_that_its_order_is_lost"
)

find_python() {
    # A pyenv install, else one on PATH; a candidate must really run (a pyenv shim
    # for a version that is not selected does not).
    local version=$1 candidate
    for candidate in "$HOME"/.pyenv/versions/"$version".*/bin/python "$(command -v "python$version" || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c "" >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
    return 1
}

# Set up every venv first, then run the core suites side by side: each uses about one of
# the two cores (the test run, DataLoader workers and decode threads mostly wait), so
# together they take about half the time of one after another. The suite passes beside
# two busy loops, so this contention is nothing it has not met.
tested=()
for version in 3.10 3.12 3.13; do
    if ! python=$(find_python "$version"); then
        echo "pythons: python$version is not installed: not tested"
        continue
    fi
    venv=.venv-$version
    stamp=$venv/anyloader-setup.stamp
    hash=$(cat pyproject.toml scripts/pythons.sh scripts/cpu-only-excludes.txt | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash" ]; then
        echo "pythons: setting up $venv ($python)"
        "$uv" venv -q --allow-existing -p "$python" "$venv"
        "$uv" pip install -q -p "$venv/bin/python" --excludes scripts/cpu-only-excludes.txt \
            "torch==2.13.0" -e ".[core-test]"
        echo "$hash" > "$stamp"
    fi
    tested+=("$version")
done

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
for version in "${tested[@]}"; do
    venv=.venv-$version
    # A fifth of each property's examples: the interpreter is under test here (tests/_budget.py).
    ANYLOADER_EXAMPLES=0.2 "$venv/bin/python" -m pytest -q -p no:cacheprovider "${core[@]}" \
        "${skip[@]}" > "$logs/$version.log" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!tested[@]}"; do
    version=${tested[$i]}
    if wait "${pids[$i]}"; then result=passed; else result=FAILED; status=1; fi
    echo "pythons: the core suite on $(".venv-$version/bin/python" --version): $result"
    cat "$logs/$version.log"
done
exit $status

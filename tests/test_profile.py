"""``anyloader profile``: the advice on constructed stats, and the command end to end."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from anyloader import EpochStats, LatencyHistogram
from anyloader.__main__ import main
from anyloader._advice import Setup, advise, breakdown

# Training waited 5 s of 10; one worker-second per second; nothing else stands out:
# 10 of 64 requests in flight on average, 0.5 of 2 CPUs busy, no decoding.
BOUND = EpochStats(
    rows=1000,
    bytes=10**6,
    fetches=1000,
    fetch_latency=LatencyHistogram.of([0.1] * 1000),  # 100 s of latency over 10 s: 10 in flight
    seconds=10.0,
    cpu_seconds=5.0,
    consumer_seconds=10.0,
    consumer_wait_seconds=5.0,
    workers=1,
)
SETUP = Setup(concurrency=64, fetch_size=1, batch_mode=True, workers=2, ordered=True, cpus=2)


def advice(stats: EpochStats, setup: Setup = SETUP, startup: float = 0.0) -> tuple[str, ...]:
    return advise(stats, setup, startup=startup).advice


def test_not_input_bound_gives_no_advice() -> None:
    verdict = advise(replace(BOUND, consumer_wait_seconds=0.5), SETUP)
    assert verdict.advice == ()
    assert str(verdict) == "input-bound 5%: the loader keeps up, training sets the pace"


def test_nothing_standing_out_says_so() -> None:
    verdict = advise(BOUND, SETUP)
    assert verdict.input_bound == 0.5
    assert str(verdict) == "input-bound 50%: no single cause stands out: see the timeline"


def test_start_up_most_of_the_wait() -> None:
    assert advice(BOUND, startup=3.0)[0].startswith("longer epochs or persistent_workers=True")
    assert not any("persistent" in a for a in advice(BOUND, startup=1.0))


def test_a_failing_store() -> None:
    assert advice(replace(BOUND, faults=100))[0] == "fix the store (100 of 1100 attempts failed)"
    assert advice(replace(BOUND, faults=10)) == advice(BOUND)


def test_stragglers_holding_up_ordered_delivery() -> None:
    stalled = replace(BOUND, stall_seconds=2.0)  # 40% of the wait with the budget full
    assert "cut stragglers (timeout= or ordered=False)" in advice(stalled)
    assert "cut stragglers (timeout= or ordered=False)" not in advice(
        stalled, replace(SETUP, ordered=False)
    )
    assert advice(replace(BOUND, stall_seconds=0.5)) == advice(BOUND)


def test_per_sample_mode() -> None:
    assert "use batch mode" in advice(BOUND, replace(SETUP, batch_mode=False))
    assert "use batch mode" not in advice(BOUND)


def test_per_sample_mode_beside_torch_threads() -> None:
    # Collating in the process that decodes, on several torch threads: say so.
    one_process = replace(SETUP, batch_mode=False, workers=0, torch_threads=2)
    hint = "use batch mode, or torch.set_num_threads(1) if the model is not on the CPU"
    assert hint in advice(BOUND, one_process)
    assert hint not in advice(BOUND, replace(one_process, torch_threads=1))
    assert hint not in advice(BOUND, replace(one_process, workers=2))  # workers use one thread


DECODE_LESS = (
    "decode less: fetches wait for the decode threads (a geometry with a smaller output "
    "decodes JPEGs at a reduced scale; or decode on a GPU)",
)


def test_decoding_fills_the_cpus() -> None:
    decoding = replace(BOUND, decode_seconds=15.0, cpu_seconds=19.0)  # 1.5 of 2 CPUs decoding
    assert advice(decoding) == DECODE_LESS


def test_the_cpus_are_full() -> None:
    busy = replace(BOUND, cpu_seconds=18.0)  # 1.8 of 2 CPUs busy
    assert advice(busy) == ("less work per row: the CPUs are full (1.8 of 2 busy)",)


def test_every_request_in_flight() -> None:
    saturated = replace(BOUND, fetch_latency=LatencyHistogram.of([0.6] * 1000))  # 60 in flight
    expected = "raise concurrency (64 -> 128): every request in flight is waiting on the store"
    assert advice(saturated) == (expected,)
    # In flight but queued for the decode threads: more requests would queue too.
    queued = replace(saturated, decode_wait_seconds=400.0, decode_seconds=8.0)
    assert advice(queued) == DECODE_LESS


def test_more_workers_when_the_store_is_not_the_limit() -> None:
    assert advice(BOUND, replace(SETUP, workers=0)) == ("more workers",)
    assert advice(BOUND, replace(SETUP, workers=2)) != ("more workers",)


def test_merged_worker_stats_are_read_per_worker() -> None:
    # Two workers, each 10 s with 1 CPU busy: 2 of 2 CPUs, not 1 (durations are summed).
    two = BOUND + BOUND
    assert two.seconds == 20.0
    assert two.workers == 2
    assert advice(replace(two, cpu_seconds=19.0)) == (
        "less work per row: the CPUs are full (1.9 of 2 busy)",
    )


def test_breakdown_names_every_stage() -> None:
    text = "\n".join(breakdown(replace(BOUND, decoded_rows=1000, decode_seconds=1.0, retries=3)))
    for stage in ("rows ", "fetch ", "decode ", "cpu ", "faults ", "consumer ", "loader "):
        assert f"\n{stage}" in f"\n{text}", stage
    assert "rows     1,000 in 1,000 fetches (1 row each)" in text
    assert "p50 100.0 ms" in text
    assert "p99 100.0 ms" in text
    assert "3 retries" in text
    assert "input-bound 50%" in text


@pytest.mark.slow
def test_profile_writes_a_png_and_prints_a_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ANYLOADER_CACHE", str(tmp_path / "cache"))
    png = tmp_path / "profile.png"
    argv = ["profile", "--rows", "48", "--size", "64", "--batch-size", "8", "--step-ms", "1"]
    argv += ["--crop", "32", "--fetch-size", "4", "--columns", "images,masks"]
    assert main([*argv, "--png", str(png), "--backend", "trio", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "verdict  input-bound " in out
    assert "rows     48 in 12 fetches (4 rows each)" in out
    assert "concurrency=32 fetch_size=4" in out  # the loader's choice, shown: 128 rows in flight
    assert "geometry=crop 32 columns=images,masks" in out
    assert f"figure   {png}" in out
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 30_000  # three panels with text, not an empty canvas

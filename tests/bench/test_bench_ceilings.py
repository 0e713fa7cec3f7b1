"""The bench's ceilings: the rate the machine's cores allow at the CPU per job measured, and the rate at which
the coordinator's loop thread alone would be saturated (bench/README "What bounds 2, 3 and 4")."""

from __future__ import annotations

import os
import threading
import time

import pytest

from bench.__main__ import ceilings
from bench.procs import (
    CLIENT_KEY,
    CoordinatorProcess,
    commit_seconds_in,
    free_port,
    runqueue_wait_seconds,
    threads_cpu_seconds,
)


def test_cpu_ceiling_is_every_core_over_the_cpu_of_all_processes_per_job():
    figures = {
        "e2e_batched_jobs_per_s": 2500.0,
        "e2e_batched_coord_cpu_us_per_job": 300.0,
        "e2e_batched_coord_loop_cpu_us_per_job": 200.0,
        "e2e_batched_client_cpu_us_per_job": 20.0,
        "e2e_batched_miners_cpu_us_per_job": 80.0,
    }
    ceilings(figures, cpus=2)
    assert figures["e2e_batched_cpu_ceiling_jobs_per_s"] == pytest.approx(2e6 / 400)
    assert figures["e2e_batched_loop_ceiling_jobs_per_s"] == pytest.approx(1e6 / 200)
    # at 2,500 jobs/s: 2,500 x 400 us of CPU a second, and the loop thread ran half of the time
    assert figures["e2e_batched_cores_used"] == pytest.approx(1.0)
    assert figures["e2e_batched_loop_busy"] == pytest.approx(0.5)


def test_no_ceiling_from_a_scenario_measured_in_part():
    figures = {"e2e_unary_coord_cpu_us_per_job": 900.0, "e2e_unary_client_cpu_us_per_job": 200.0}
    ceilings(figures, cpus=2)
    assert "e2e_unary_cpu_ceiling_jobs_per_s" not in figures  # (the miners' share is missing: no figure)
    assert "e2e_unary_loop_ceiling_jobs_per_s" not in figures


def test_a_part_measured_under_one_clock_tick_still_gives_a_ceiling():
    """/proc counts CPU in 10 ms ticks: a smoke run's client, ~600 jobs at ~10 us each, often reads 0, and the
    smoke test then found no ceiling (one run in five)."""
    figures = {
        "e2e_batched_jobs_per_s": 4000.0,
        "e2e_batched_coord_cpu_us_per_job": 200.0,
        "e2e_batched_client_cpu_us_per_job": 0.0,
        "e2e_batched_miners_cpu_us_per_job": 50.0,
    }
    ceilings(figures, cpus=2)
    assert figures["e2e_batched_cpu_ceiling_jobs_per_s"] == pytest.approx(2e6 / 250)


def test_loop_runqueue_share_is_the_rate_times_its_wait_per_job():
    figures = {
        "e2e_batched_jobs_per_s": 4000.0,
        "e2e_batched_coord_loop_cpu_us_per_job": 180.0,
        "e2e_batched_coord_loop_runqueue_us_per_job": 40.0,
    }
    ceilings(figures, cpus=2)
    assert figures["e2e_batched_loop_runqueue"] == pytest.approx(0.16)  # 4,000 x 40 us a second


def test_thread_figures_read_this_process_threads():
    threads = threads_cpu_seconds(os.getpid())
    assert threading.get_native_id() in threads and all(t >= 0 for t in threads.values())
    waited = runqueue_wait_seconds(os.getpid(), threading.get_native_id())
    assert waited is None or waited >= 0
    assert runqueue_wait_seconds(os.getpid(), 1 << 30) is None  # no such thread


def test_thread_split_names_the_main_thread_and_the_busiest_other():
    """Scenario 6's split of the coordinator's CPU: its loop (the main thread) and its busiest other thread."""
    from bench.scenarios import thread_split

    pid = os.getpid()
    before = thread_split(pid)
    done, release = threading.Event(), threading.Event()

    def spin() -> None:  # a thread busy for ~0.3 s of CPU (the writer's part, in the coordinator)
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        done.set()
        release.wait(10)

    worker = threading.Thread(target=spin)
    worker.start()
    done.wait(10)
    after = thread_split(pid, since=before)  # while it still lives: an ended thread is in no task list
    release.set()
    worker.join()
    assert set(after) == {"cpu", "loop_cpu", "busiest_thread_cpu"}
    assert after["busiest_thread_cpu"] >= 0.2  # (clock ticks: 10 ms)
    assert after["cpu"] >= after["loop_cpu"] + after["busiest_thread_cpu"] - 0.02
    assert after["loop_cpu"] >= 0


def test_slot_cycles_are_assigned_to_completed_of_the_jobs_completed_in_the_window(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Scenario 3's slot figures, from a real store file: a job's slot is held from its attempt's assignment
    to its completion; jobs completed outside the window, and other attempts' assignments, do not count."""
    import sqlite3

    from bench.scenarios import slot_cycles
    from coordinator.store.schema import MIGRATIONS

    db = tmp_path / "e2e.db"
    conn = sqlite3.connect(db)
    for script in MIGRATIONS:
        conn.executescript(script)

    def event(job: str, seq: int, attempt: int, reason: str, at_ms: float) -> None:
        conn.execute("INSERT INTO job_events VALUES (?,?,?,?,?,?,?,?,?)",
                     (job, seq, None, 2, attempt, "m", reason, "", int(at_ms * 1000)))  # fmt: skip

    event("a", 1, 1, "ASSIGNED", 1_000)
    event("a", 2, 1, "COMPLETED", 1_010)  # 10 ms
    event("b", 1, 1, "ASSIGNED", 1_000)  # attempt 1 lost: its slot time is not the completed attempt's
    event("b", 2, 2, "ASSIGNED", 1_020)
    event("b", 3, 2, "COMPLETED", 1_050)  # 30 ms
    event("c", 1, 1, "ASSIGNED", 1_000)
    event("c", 2, 1, "COMPLETED", 1_070)  # 70 ms
    event("e", 1, 1, "ASSIGNED", 1_000)  # given back unspent, then assigned again at the same attempt
    event("e", 2, 1, "ASSIGNED", 1_040)
    event("e", 3, 1, "COMPLETED", 1_050)  # 10 ms
    event("d", 1, 1, "ASSIGNED", 1_000)
    event("d", 2, 1, "COMPLETED", 5_000)  # after the window
    conn.commit()
    conn.close()
    cycles = slot_cycles(db, 1_000_000, 2_000_000)
    assert cycles == {"slot_cycle_p50_ms": 30.0, "slot_cycle_mean_ms": pytest.approx(120 / 4)}
    assert slot_cycles(db, 10_000_000, 20_000_000) == {}  # none completed: no figure


def test_writer_shares_are_the_rate_times_its_time_per_job():
    figures = {
        "e2e_batched_jobs_per_s": 5000.0,
        "e2e_batched_coord_writer_commit_us_per_job": 180.0,
        "e2e_batched_coord_busiest_thread_cpu_us_per_job": 60.0,
        "e2e_batched_coord_writer_runqueue_us_per_job": 20.0,
    }
    ceilings(figures, cpus=2)
    # 5,000 jobs a second: 0.9 s of each second in group commits, 0.3 s of it on a core, 0.1 s waiting for one
    assert figures["e2e_batched_writer_committing"] == pytest.approx(0.9)
    assert figures["e2e_batched_writer_ran"] == pytest.approx(0.3)
    assert figures["e2e_batched_writer_runqueue"] == pytest.approx(0.1)


def test_no_writer_share_without_a_rate_or_a_reading():
    figures = {"e2e_unary_coord_writer_commit_us_per_job": 100.0}
    ceilings(figures, cpus=2)  # (no rate: the scenario did not finish)
    assert not any(key.startswith("e2e_unary_writer_") for key in figures)
    figures = {"e2e_unary_jobs_per_s": 1000.0, "e2e_unary_coord_busiest_thread_cpu_us_per_job": 100.0}
    ceilings(figures, cpus=2)
    assert (
        figures["e2e_unary_writer_ran"] == pytest.approx(0.1) and "e2e_unary_writer_committing" not in figures
    )


async def test_the_bench_coordinator_reports_its_writers_commit_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The bench's coordinator serves its metrics, and the writer's time in group commits is read from them."""
    from aitbc.client import Client

    coord = CoordinatorProcess(tmp_path, "coord", tmp_path / "c.db", free_port(), n_miner_keys=1)
    await coord.start()
    try:
        before = coord.commit_seconds()
        assert before is not None
        async with Client(coord.address, CLIENT_KEY) as client:
            for n in range(3):
                await client.submit({"n": n})  # answered once its commit is durable
        after = coord.commit_seconds()
        assert after is not None and after > before
    finally:
        await coord.stop()
    assert coord.commit_seconds() is None  # (nothing listens any more)
    assert (
        commit_seconds_in("aitbc_store_commit_seconds_count 3.0\naitbc_store_commit_seconds_sum 0.25\n")
        == 0.25
    )
    assert commit_seconds_in("# no such metric\n") is None

"""The Prometheus endpoint, scraped and parsed during a real run: counters and gauges follow the jobs."""

from __future__ import annotations

import asyncio
import gzip
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aitbc.admin_cli import AdminClient
from ops_support import (
    ADMIN_KEY,
    COMPLETED,
    FAILED,
    MINER,
    eventually,
    fetch_text,
    free_port,
    running,
    wait_terminal,
)

from coordinator.config import Settings, SettingsError, load_settings
from coordinator.observability import metrics

EXPECTED_FAMILIES = {
    "aitbc_jobs_submitted": "counter",
    "aitbc_jobs_finished": "counter",
    "aitbc_job_requeues": "counter",
    "aitbc_receipts_issued": "counter",
    "aitbc_stream_messages_received": "counter",
    "aitbc_stream_messages_sent": "counter",
    "aitbc_rate_limited_requests": "counter",
    "aitbc_miner_connections": "counter",
    "aitbc_miner_disconnections": "counter",
    "aitbc_idempotency_store_lookups": "counter",
    "aitbc_job_queue_wait_seconds": "histogram",
    "aitbc_job_dispatch_latency_seconds": "histogram",
    "aitbc_job_run_seconds": "histogram",
    "aitbc_store_commit_seconds": "histogram",
    "aitbc_store_commit_group_size": "histogram",
    "aitbc_coordinator_info": "gauge",
    "aitbc_jobs": "gauge",
    "aitbc_queue_depth": "gauge",
    "aitbc_miners_connected": "gauge",
    "aitbc_miners_draining": "gauge",
    "aitbc_miners_disconnected": "gauge",
    "aitbc_miner_slots": "gauge",
    "aitbc_receipt_log_leaves": "gauge",
    "aitbc_receipt_checkpoint_leaves": "gauge",
    "process_resident_memory_bytes": "gauge",
}


async def scrape_when(ops, ready, limit_s: float = 10.0):  # type: ignore[no-untyped-def]
    """Scrape until ready(scrape) holds (figures recorded just after what the test awaited), bounded."""
    latest = None

    async def probe():  # type: ignore[no-untyped-def]
        nonlocal latest
        latest = await ops.scrape()
        return ready(latest)

    await eventually(probe, limit_s=limit_s, what="the metrics to settle")
    return latest


async def test_counters_and_gauges_follow_a_real_run(tmp_path: Path) -> None:
    async with running(tmp_path, metrics_port=free_port()) as ops:
        s = await ops.scrape()
        for name, kind in EXPECTED_FAMILIES.items():
            assert name in s.families, f"{name} missing from the scrape"
            assert s.families[name].type == kind, (name, s.families[name].type)
        assert s.value("aitbc_jobs_submitted_total") == 0
        assert s.value("aitbc_jobs_finished_total", state="completed") == 0
        assert s.value("aitbc_miners_connected") == 0
        assert s.value("process_resident_memory_bytes") > 1 << 20
        assert s.value("aitbc_coordinator_info", coordinator_id="coord-local", version=s.labels_of(
            "aitbc_coordinator_info")[0]["version"]) == 1  # fmt: skip

        # a miner with two slots, held at the gate: two jobs run, the third waits in the queue
        ops.runner.gate.clear()
        await ops.miner(slots=2)
        client = ops.client()
        jobs = [await client.submit({"n": i}, priority=5) for i in range(3)]
        await eventually(lambda: len(ops.runner.seen_metadata) == 2, what="two jobs at the miner")
        s = await ops.scrape()
        assert s.value("aitbc_jobs_submitted_total") == 3
        assert s.value("aitbc_miners_connected") == 1
        assert s.value("aitbc_miner_connections_total", transport="stream") == 1
        assert s.value("aitbc_miner_slots", state="busy") == 2
        assert s.value("aitbc_miner_slots", state="free") == 0
        assert s.value("aitbc_queue_depth", priority="5") == 1
        assert s.value("aitbc_queue_depth", priority="0") == 0
        active = sum(s.value("aitbc_jobs", state=st) for st in ("queued", "assigned", "running"))
        assert active == 3 and s.value("aitbc_jobs", state="queued") == 1
        assert s.value("aitbc_stream_messages_received_total", type="hello") == 1
        assert s.value("aitbc_stream_messages_sent_total", type="welcome") == 1
        assert s.value("aitbc_stream_messages_sent_total", type="assignments") >= 1
        assert s.value("aitbc_job_dispatch_latency_seconds_count") == 2
        assert s.value("aitbc_job_queue_wait_seconds_count") == 2

        ops.runner.gate.set()
        for job in jobs:
            assert (await wait_terminal(client, job.job_id)).state == COMPLETED
        # a client can see COMPLETED a moment before the miner's ack is written and the writer thread has
        # recorded both commit figures: scrape until those settle (bounded), then check everything
        s = await scrape_when(ops, lambda s: s.value("aitbc_stream_messages_sent_total", type="result_ack") == 3
                              and s.value("aitbc_store_commit_group_size_count") == s.value("aitbc_store_commit_seconds_count"))  # fmt: skip
        assert s.value("aitbc_jobs_finished_total", state="completed") == 3
        assert s.value("aitbc_receipts_issued_total") == 3
        assert s.value("aitbc_receipt_log_leaves") == 3
        assert s.value("aitbc_job_queue_wait_seconds_count") == 3
        assert s.value("aitbc_job_dispatch_latency_seconds_count") == 3
        assert s.value("aitbc_job_run_seconds_count") == 3
        assert s.value("aitbc_job_run_seconds_sum") > 0
        assert s.value("aitbc_job_run_seconds_bucket", le="+Inf") == 3
        assert s.value("aitbc_stream_messages_received_total", type="results") >= 1
        assert s.value("aitbc_stream_messages_sent_total", type="result_ack") == 3
        assert s.value("aitbc_queue_depth", priority="5") == 0
        assert s.value("aitbc_miner_slots", state="free") == 2
        commits = s.value("aitbc_store_commit_seconds_count")
        assert commits >= 3 and s.value("aitbc_store_commit_group_size_count") == commits
        assert s.value("aitbc_store_commit_group_size_sum") >= commits

        # failures: one fatal, one retried then exhausted (two requeue-free attempts: one requeue)
        fatal = await client.submit({"fail": "fatal"})
        flaky = await client.submit({"fail": "retry"}, max_attempts=2)
        assert (await wait_terminal(client, fatal.job_id)).state == FAILED
        assert (await wait_terminal(client, flaky.job_id)).state == FAILED
        s = await scrape_when(ops, lambda s: s.value("aitbc_jobs_finished_total", state="failed") == 2)
        assert s.value("aitbc_jobs_finished_total", state="failed") == 2
        assert s.value("aitbc_job_requeues_total", reason="MINER_FAILURE") == 1
        assert s.value("aitbc_stream_messages_received_total", type="failure") == 3
        assert {d["reason"] for d in s.labels_of("aitbc_job_requeues_total")} >= {
            "LEASE_EXPIRED",
            "MINER_FAILURE",
        }
        assert "FLAKY_GPU" not in {d["reason"] for d in s.labels_of("aitbc_job_requeues_total")}

        # a queued job canceled; a drained miner leaves with reason DRAINED
        ops.runner.gate.clear()
        busy = [await client.submit({"n": 10 + i}) for i in range(2)]
        waiting = await client.submit({"n": 99})
        await client.cancel(waiting.job_id, "not needed")
        s = await ops.scrape()
        assert s.value("aitbc_jobs_finished_total", state="canceled") == 1
        async with AdminClient(ops.address, ADMIN_KEY) as admin:
            await admin.drain(MINER)
        s = await ops.scrape()
        assert s.value("aitbc_miners_draining") == 1
        assert s.value("aitbc_miner_slots", state="free") == 0  # a draining miner offers no slots
        ops.runner.gate.set()
        for job in busy:
            assert (await wait_terminal(client, job.job_id)).state == COMPLETED
        await eventually(
            lambda: MINER not in ops.coordinator.scheduler.by_miner, what="the drained miner gone"
        )
        s = await ops.scrape()
        assert s.value("aitbc_miner_disconnections_total", reason="DRAINED") == 1
        assert s.value("aitbc_miners_connected") == 0
        assert s.value("aitbc_jobs_finished_total", state="completed") == 5
        assert s.value("aitbc_receipts_issued_total") == 5


async def test_no_job_or_client_ids_in_labels(tmp_path: Path) -> None:
    async with running(tmp_path, metrics_port=free_port()) as ops:
        await ops.miner()
        client = ops.client()
        job = await client.submit({"x": 1})
        await wait_terminal(client, job.job_id)
        text = await asyncio.to_thread(fetch_text, ops.metrics_url)
        assert job.job_id not in text
        assert "ops-client" not in text and MINER not in text  # identities are not labels either
        assert "_created" not in text


async def test_rate_limit_rejections_are_counted_by_key_and_bounded(tmp_path: Path) -> None:
    async with running(tmp_path, metrics_port=free_port()) as ops:
        metrics.rate_limited("ops-client", "submit")
        metrics.rate_limited("ops-client", "submit")
        metrics.rate_limited("ops-admin", "admin")
        for i in range(metrics.MAX_KEY_LABELS + 10):
            metrics.rate_limited(f"peer-{i}", "read")
        s = await ops.scrape()
        assert s.value("aitbc_rate_limited_requests_total", key="ops-client", group="submit") == 2
        assert s.value("aitbc_rate_limited_requests_total", key="ops-admin", group="admin") == 1
        keys = {d["key"] for d in s.labels_of("aitbc_rate_limited_requests_total")}
        assert len(keys) <= metrics.MAX_KEY_LABELS + 1 and "other" in keys
    metrics.rate_limited("after-stop", "submit")  # no coordinator: a no-op, not an error


@pytest.mark.skipif(
    "rate_limits" not in Settings.__dataclass_fields__, reason="needs the RATE_LIMITS setting"
)
async def test_the_rate_limiter_feeds_the_counter(tmp_path: Path) -> None:
    async with running(tmp_path, metrics_port=free_port(), rate_limits="submit=1/s:burst=1") as ops:
        client = ops.client()
        refused = 0
        for i in range(5):
            try:
                await client.submit({"i": i})
            except Exception as exc:  # RESOURCE_EXHAUSTED, reason RATE_LIMITED
                assert "RESOURCE_EXHAUSTED" in repr(exc) or "rate" in str(exc).lower()
                refused += 1
        assert refused >= 1
        s = await ops.scrape()
        assert s.value("aitbc_rate_limited_requests_total", key="ops-client", group="submit") == refused


async def test_endpoint_http_behaviour(tmp_path: Path) -> None:
    async with running(tmp_path, metrics_port=free_port()) as ops:

        def fetch(path: str, method: str = "GET", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
            url = ops.metrics_url.replace("/metrics", path)
            request = urllib.request.Request(url, method=method, headers=headers or {})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status, dict(r.headers), r.read()
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), e.read()

        status, headers, body = await asyncio.to_thread(fetch, "/metrics", "GET", {"Accept-Encoding": "gzip"})
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        assert b"aitbc_jobs_submitted_total" in gzip.decompress(body)
        status, headers, body = await asyncio.to_thread(
            fetch, "/metrics", "GET", {"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")
        assert (await asyncio.to_thread(fetch, "/nope"))[0] == 404
        assert (await asyncio.to_thread(fetch, "/metrics", "POST"))[0] == 405
        status, _, body = await asyncio.to_thread(fetch, "/metrics", "HEAD")
        assert status == 200 and body == b""


async def test_metrics_off_by_default(tmp_path: Path) -> None:
    async with running(tmp_path) as ops:
        assert ops.coordinator.observability is not None
        assert ops.coordinator.observability.metrics is None
        assert ops.coordinator.observability.metrics_port == 0
        assert metrics.current() is None


def test_metrics_settings_are_validated(tmp_path: Path) -> None:
    assert load_settings({"METRICS_PORT": "9464"}, env_file=None).metrics_port == 9464
    assert load_settings({}, env_file=None).metrics_port == 0
    for bad in (
        {"METRICS_PORT": "70000"},
        {"METRICS_PORT": "x"},
        {"METRICS_PORT": "50051", "APP_PORT": "50051"},
    ):
        with pytest.raises(SettingsError, match="METRICS_PORT"):
            load_settings(bad, env_file=None)


async def test_a_metrics_port_in_use_stops_start_up(tmp_path: Path) -> None:
    import socket

    from ops_support import make_settings

    from coordinator.config import SettingsError
    from coordinator.server import start

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SettingsError, match="METRICS_PORT: cannot listen on"):  # serve: one line, exit 2
            await start(make_settings(tmp_path, metrics_port=port))
    assert metrics.current() is None
    async with running(
        tmp_path, metrics_port=port
    ) as ops:  # the same store opens again: nothing was left held
        assert (await ops.scrape()).value("aitbc_jobs_submitted_total") == 0

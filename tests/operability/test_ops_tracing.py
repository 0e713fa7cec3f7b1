"""Tracing: one trace follows a job from the client's span through submit, assignment, the miner's run,
result and receipt, captured with the SDK's in-memory span exporter."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ops_support import COMPLETED, eventually, running, wait_terminal

from coordinator.observability import tracing

_EXPORTER = InMemorySpanExporter()


def _provider() -> TracerProvider:
    """The process's SDK tracer provider (installed once: OpenTelemetry allows a single global one)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not getattr(provider, "_aitbc_test_exporter", False):
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider._aitbc_test_exporter = True  # type: ignore[attr-defined]
    return provider


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = _provider()
    _EXPORTER.clear()
    tracing.enable(provider)
    try:
        yield _EXPORTER
    finally:
        tracing.disable()
        _EXPORTER.clear()


def _of_job(finished: tuple[ReadableSpan, ...], job_id: str) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in finished:
        if (s.attributes or {}).get("aitbc.job_id") == job_id:
            out.setdefault(s.name, []).append(s)
    return out


async def test_one_trace_links_submit_assignment_result_and_receipt(tmp_path: Path, spans) -> None:  # type: ignore[no-untyped-def]
    async with running(tmp_path) as ops:
        await ops.miner()
        client = ops.client()
        tracer = trace.get_tracer("ops-test-client")
        with tracer.start_as_current_span("client.work") as root:
            job = await client.submit({"prompt": "traced"})
            assert (await wait_terminal(client, job.job_id)).state == COMPLETED
        await eventually(lambda: "aitbc.job.receipt" in _of_job(spans.get_finished_spans(), job.job_id),
                         what="the receipt span")  # fmt: skip

    finished = spans.get_finished_spans()
    by_name = _of_job(finished, job.job_id)
    for name in ("aitbc.job.submit", "aitbc.job.assign", "aitbc.job.accept", "aitbc.job.result",
                 "aitbc.job.receipt", "aitbc.miner.run"):  # fmt: skip
        assert len(by_name.get(name, [])) == 1, (name, sorted(by_name))
    submit = by_name["aitbc.job.submit"][0]
    trace_id = root.get_span_context().trace_id
    for group in by_name.values():
        for s in group:
            assert s.context.trace_id == trace_id, f"{s.name} is in another trace"
    # submit: child of the SubmitJob server span, itself the child of the client's span (traceparent metadata)
    rpc = next(s for s in finished if s.name == "aitbc.coordinator.v1.JobService/SubmitJob"
               and s.context.trace_id == trace_id)  # fmt: skip
    assert rpc.kind is trace.SpanKind.SERVER
    assert rpc.parent is not None and rpc.parent.span_id == root.get_span_context().span_id
    assert rpc.parent.is_remote
    assert submit.parent is not None and submit.parent.span_id == rpc.context.span_id
    # every later step: a child of the submit span
    for name in ("aitbc.job.assign", "aitbc.job.accept", "aitbc.job.result", "aitbc.job.receipt"):
        span = by_name[name][0]
        assert span.parent is not None and span.parent.span_id == submit.context.span_id, name
    assign, result, receipt = (
        by_name["aitbc.job.assign"][0],
        by_name["aitbc.job.result"][0],
        by_name["aitbc.job.receipt"][0],
    )
    assert assign.attributes["aitbc.miner_id"] == "ops-miner" and assign.attributes["aitbc.attempt"] == 1
    assert receipt.attributes["aitbc.receipt_id"] and receipt.attributes["aitbc.leaf_index"] == 0
    assert assign.start_time <= assign.end_time <= result.end_time <= receipt.end_time
    assert result.start_time <= assign.end_time + 1_000_000  # the result span covers the attempt
    # the miner's span joined through the assignment's trace context, under the assignment span
    run = by_name["aitbc.miner.run"][0]
    assert run.parent is not None and run.parent.span_id == assign.context.span_id
    assert ops.runner.seen_metadata[job.job_id]["traceparent"].split("-")[1] == format(trace_id, "032x")


async def test_a_job_without_a_client_trace_gets_its_own(tmp_path: Path, spans) -> None:  # type: ignore[no-untyped-def]
    async with running(tmp_path) as ops:
        await ops.miner()
        client = ops.client()
        job = await client.submit({"prompt": "untraced caller"})
        await wait_terminal(client, job.job_id)
    by_name = _of_job(spans.get_finished_spans(), job.job_id)
    trace_ids = {s.context.trace_id for group in by_name.values() for s in group}
    assert len(trace_ids) == 1 and {"aitbc.job.submit", "aitbc.job.result", "aitbc.miner.run"} <= set(by_name)


async def test_off_means_no_spans_and_no_trace_context(tmp_path: Path) -> None:
    provider = _provider()
    _EXPORTER.clear()
    assert not tracing.ENABLED
    async with running(tmp_path) as ops:
        assert ops.coordinator.observability is not None and ops.coordinator.observability.tracer is None
        await ops.miner()
        client = ops.client()
        with provider.get_tracer("ops-test-client").start_as_current_span("client.work"):
            job = await client.submit({"prompt": "tracing off"})
        await wait_terminal(client, job.job_id)
    assert "traceparent" not in ops.runner.seen_metadata[job.job_id]
    assert not [s for s in _EXPORTER.get_finished_spans() if s.name.startswith("aitbc.job")]
    _EXPORTER.clear()


def test_otel_variables_decide() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console,otlp"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.configure(
        {"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}
    )
    assert not tracing.ENABLED


async def _demo(env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coordinator", "demo", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None}, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_otel_variables_turn_tracing_on_in_a_fresh_process() -> None:
    clean = {k: "" for k in os.environ if k.startswith("OTEL_")}
    code, out, err = await _demo(
        {**clean, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "ops-test"}
    )
    assert code == 0, err[-2000:]
    names = set(re.findall(r'"name": "(aitbc[^"]*)"', out))
    assert {"aitbc.job.submit", "aitbc.job.assign", "aitbc.job.result", "aitbc.job.receipt", "aitbc.miner.run",
            "aitbc.coordinator.v1.JobService/SubmitJob"} <= names, names  # fmt: skip
    assert '"service.name": "ops-test"' in out
    assert "trace_id=" in err  # the job lines carry the trace id
    code, out, err = await _demo({**clean, "OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"})
    assert code == 0, err[-2000:]
    assert '"name": "aitbc' not in out and "trace_id=" not in err

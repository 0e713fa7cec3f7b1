"""docs/operations.md walked as an operator walks it, against `python -m coordinator serve` with an env file and
`aitbc miner run` processes: its `aitbc admin` block run as written, its health probe, its log lines and their
fields, the drain of a miner and the upgrade of the coordinator (SIGTERM, start again, the running job and the
operator's drain kept), and every metric it names: exported under that name, type and labels, and every
metric and label its PromQL queries use.

The commands, the metrics table, the PromQL block and the log tables are read from the doc, so that the doc
and this test cannot drift. Only the address is substituted (and `top` is given `--iterations 1`, as the doc
says it may be); the names (`alice`, `gpu-07`) are the doc's own, given to the keys of the env file."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shlex
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ops_support import Samples, eventually, fetch_text, free_port, make_settings

from coordinator.server import start
from tests.polyglot.test_grpcurl_readme import GRPCURL
from tests.security.doc_walk_support import (
    BIN,
    ROOT,
    Serving,
    blocks,
    ok,
    section,
    serving,
    sh,
    table_rows,
    user_env,
)
from tests.security.sec_support import Pki

DOC = ROOT / "docs" / "operations.md"
DOC_ADDRESS = "127.0.0.1:50051"
CLIENT_KEY, MINER_KEY, ADMIN_KEY = "walk-client-key-3c1f", "walk-miner-key-8d2e", "walk-admin-key-5a7b"
MINER = "gpu-07"  # the doc's miner


# ---------------------------------------------------------------------- what the doc says
def doc() -> str:
    return DOC.read_text()


@dataclass
class DocMetric:
    name: str  # as the doc writes it (counters with _total)
    type: str
    labels: dict[str, list[str]] = field(default_factory=dict)  # label -> the values the doc lists (if any)


def documented_metrics() -> dict[str, DocMetric]:
    """The Metrics table: name, type, and labels with the values it enumerates (`state` = `a`, `b`)."""
    found: dict[str, DocMetric] = {}
    for cells in table_rows(section(doc(), "Metrics")):
        if not re.fullmatch(r"`\w+`", cells[0]):
            continue
        metric = DocMetric(cells[0].strip("`"), cells[1])
        labels = re.sub(r"\([^)]*\)", "", cells[2])  # (explanations in parentheses name no labels)
        if " = " in labels:
            name, values = labels.split(" = ", 1)
            listed = re.findall(r"`([^`]+)`", values)
            if "…" in values:  # `0`…`9`
                listed = [str(n) for n in range(int(listed[0]), int(listed[1]) + 1)]
            metric.labels[name.strip("` ")] = listed
        else:
            metric.labels = {name: [] for name in re.findall(r"`(\w+)`", labels)}
        found[metric.name] = metric
    return found


def family_name(name: str, kind: str) -> str:
    """The metric family a sample name belongs to (prometheus_client's parser drops a counter's _total)."""
    return name.removesuffix("_total") if kind == "counter" else name


def mentioned_metrics() -> set[str]:
    """Every metric name the doc mentions anywhere, histogram series reduced to their metric."""
    names = set(re.findall(r"\b((?:aitbc|process)_[a-z_]*[a-z])\b", doc()))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def admin_commands() -> list[str]:
    (block,) = [b for b in blocks(doc(), "sh") if "aitbc admin stats" in b]
    return [line for line in block.splitlines() if line.startswith("aitbc admin ")]


def event_rows() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """The Logs table of machine lines: message -> (event, [(field, value or "")])."""
    rows = {}
    for cells in table_rows(section(doc(), "Logs")):
        if len(cells) == 4 and cells[1].startswith("`") and "." in cells[1]:
            fields = re.findall(r"`(\w+)(?:=(\w+))?`", cells[2])
            rows[cells[0].strip("`")] = (cells[1].strip("`"), fields)
    return rows


def people_line(logger: str, start: str) -> str:
    """A line of the Logs table for people, by its logger and the words it starts with."""
    (line,) = [re.match(r"`([^`]*)`", c[1]).group(1) for c in table_rows(section(doc(), "Logs"))  # type: ignore[union-attr]
               if len(c) == 3 and c[0] == f"`{logger}`" and c[1].startswith(f"`{start}")]  # fmt: skip
    return line


PLACEHOLDERS = {
    "ID": r"\S+",
    "ADDRESS": r"\S+",
    "N": r"[\d.]+",
    "M": r"\d+",
    "HOST": r"\S+",
    "PORT": r"\d+",
    "URL": r"\S+",
    "SECURITY": "(?:plaintext|TLS|mutual TLS)",
}


def as_pattern(template: str) -> str:
    """A doc line with placeholders (ID, ADDRESS, N, M, `...`) as a regex."""
    pattern = re.escape(template).replace(re.escape("..."), ".*")
    return re.sub(r"\b(" + "|".join(PLACEHOLDERS) + r")\b", lambda m: PLACEHOLDERS[m.group(1)], pattern)


def serving_pattern() -> str:
    """The doc's serving-on line as a regex: its listeners after the first are there only when configured."""
    template = people_line("coordinator", "coordinator ID serving on")
    head, store = template.rsplit(" (store ", 1)
    first, *others = head.split(", ")
    optional = "".join(f"(?:{as_pattern(', ' + other)})?" for other in others)
    return as_pattern(first) + optional + as_pattern(f" (store {store}")


# ---------------------------------------------------------------------- running it
async def start_miner(address: str, gate: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    """`aitbc miner run` whose jobs wait for the gate file (a cmd runner: input on stdin, result on stdout)."""
    runner = f"cmd:sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done; cat'"
    return await asyncio.create_subprocess_exec(BIN / "aitbc", "miner", "run", "--address", address,
                                                "--api-key", MINER_KEY, "--runner", runner, "--slots", "2", env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)  # fmt: skip


def env_file(tmp_path: Path, port: int, metrics_port: int) -> Path:
    path = tmp_path / "settings.env"
    path.write_text(
        f"APP_PORT={port}\nMETRICS_PORT={metrics_port}\nDATABASE_URL=sqlite:///{tmp_path / 'c.db'}\n"
        f"CLIENT_API_KEYS=alice:{CLIENT_KEY}\nMINER_API_KEYS={MINER}:{MINER_KEY}\nADMIN_API_KEYS=ops:{ADMIN_KEY}\n"
        "LOG_FORMAT=json\nSHUTDOWN_GRACE_SECONDS=1\nSQLITE_SYNCHRONOUS=NORMAL\n"
        # one failed authentication per address, then refused and counted: the rate-limit metric shows its labels
        "RATE_LIMITS=auth_failures=1/h:burst=1\n"
    )  # fmt: skip
    return path


# ---------------------------------------------------------------------- the doc alone
def test_the_doc_names_each_metric_once_in_its_table_and_its_queries_use_only_those() -> None:
    table = documented_metrics()
    assert len(table) >= 25, sorted(table)
    assert mentioned_metrics() <= set(table), mentioned_metrics() - set(table)
    (queries,) = [b for b in blocks(doc(), "promql")]
    for line in (x for x in queries.splitlines() if not x.startswith("#")):
        names = re.findall(r"\baitbc_\w+", line)
        assert names, line
        for name in names:
            base = re.sub(r"_bucket$", "", name)
            assert base in table, f"{line}: {name} is not in the Metrics table"
            known = set(table[base].labels) | ({"le"} if name.endswith("_bucket") else set())
            for label, value in re.findall(rf"{name}\{{(\w+)=\"([^\"]*)\"\}}", line):
                assert label in known and value in table[base].labels[label], f"{line}: {label}={value}"
            for by in re.findall(r"by \(([^)]*)\)", line):
                for label in (x.strip() for x in by.split(",")):
                    labels_here = set().union(*(set(table[re.sub(r"_bucket$", "", n)].labels) for n in names))
                    assert label in labels_here | known, f"{line}: no label {label}"


# ---------------------------------------------------------------------- against a coordinator
async def test_the_operations_doc_walked_against_a_real_coordinator(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    settings = env_file(tmp_path, port, metrics_port)
    env = user_env(tmp_path, AITBC_ADDRESS=address)
    client = {**env, "AITBC_API_KEY": CLIENT_KEY}
    admin = {**env, "AITBC_API_KEY": ADMIN_KEY}
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    miners: list[asyncio.subprocess.Process] = []
    try:
        async with serving(settings) as first:
            # Ports and the serving-on line: every listener there is, and nothing else
            (line,) = first.said("coordinator ")
            assert line["msg"] == (f"coordinator coord-local serving on {address} (plaintext), metrics on "
                                   f"http://127.0.0.1:{metrics_port}/metrics (store sqlite:///{tmp_path / 'c.db'})")  # fmt: skip
            assert line["logger"] == "coordinator" and re.fullmatch(serving_pattern(), line["msg"]), line
            (listen,) = first.said("metrics on ")
            assert listen["msg"] == f"metrics on http://127.0.0.1:{metrics_port}/metrics"
            # Health: the probe as written, for "" and for each service the doc names
            (probe,) = [x for x in blocks(doc(), "sh") if "grpc.health.v1.Health/Check" in x]
            (grpcurl_line,) = [x for x in probe.splitlines() if x.startswith("grpcurl ")]
            assert GRPCURL, "grpcurl is installed by the dev extra"
            services = re.findall(r"`(aitbc\.coordinator\.v1\.\w+)`|`(\w+Service)`", section(doc(), "Health"))
            names = ["", *(full or f"aitbc.coordinator.v1.{short}" for full, short in services)]
            assert len(names) == 5, names
            for name in names:
                checked = grpcurl_line.replace(DOC_ADDRESS, address).replace("grpcurl ", f"{GRPCURL} -d "
                                                                               f"'{{\"service\": \"{name}\"}}' ", 1)  # fmt: skip
                assert json.loads(await ok(checked, env)) == {"status": "SERVING"}, name

            # A miner, and a job it runs until gate1 opens
            miners.append(await start_miner(address, gate1, env))
            await eventually(lambda: first.said("miner connected", miner_id=MINER), what="the miner")
            job1 = json.loads(await ok("aitbc submit '{\"n\": 1}'", client))["job_id"]
            await eventually(lambda: first.said("job assigned", job_id=job1), what="the assignment")

            # The operator's command line, as written
            for command in admin_commands():
                words = shlex.split(command, comments=True)
                if words[2] == "top":
                    words.append("--iterations=1")  # (the doc: "--iterations N to stop by itself")
                out = await ok(shlex.join(words), admin)
                if words[2:4] == ["jobs", "--miner"]:
                    assert [j["job_id"] for j in json.loads(out)] == [job1]
                if words[2] == "drain":
                    assert out.startswith(f"draining {MINER}: 1 running jobs will finish"), out
            assert "keys disable alice --role client" in " ".join(admin_commands())
            await ok("aitbc admin keys enable alice --role client", admin)  # ("`enable` undoes it")

            # Draining a miner, step 2: draining, then gone (DRAINED); aitbc miner run exits
            (shown,) = json.loads(await ok("aitbc admin miners --json", admin))
            assert shown["status"] == "draining"
            assert (await scrape(metrics_port)).value("aitbc_miners_draining") == 1
            gate1.touch()
            assert await asyncio.wait_for(miners[0].wait(), 60) == 0
            (gone,) = first.said("miner disconnected", miner_id=MINER)
            assert gone["reason"] == "DRAINED" and gone["event"] == "miner.disconnect"
            assert (await scrape(metrics_port)).value("aitbc_miners_draining") == 0
            assert json.loads(await ok(f"aitbc get {job1}", client))["state"] == "JOB_STATE_COMPLETED"
            # a refused call, in one line as the doc shows it; bad command-line input exits 2
            (refusal,) = re.findall(
                r"`(aitbc admin: NOT_FOUND[^`]*)`", section(doc(), "The operator's command line")
            )
            code, _, err = await sh(f"aitbc admin drain {MINER}", admin)
            assert (code, err.strip()) == (1, refusal)
            for bad in ("aitbc admin jobs --state bogus", "aitbc admin jobs --limit 0"):
                assert (await sh(bad, admin))[0] == 2, bad

            # The log lines for machines: the event and fields the doc lists, on the lines seen so far
            check_event_lines(first)

            # Upgrading the coordinator: a miner running a job, drained by the operator, across a restart
            miners.append(await start_miner(address, gate2, env))
            await eventually(
                lambda: len(first.said("miner connected", miner_id=MINER)) == 2, what="the miner"
            )
            job2 = json.loads(await ok("aitbc submit '{\"n\": 2}' --idempotency-key upgrade-1", client))[
                "job_id"
            ]
            await eventually(lambda: first.said("job assigned", job_id=job2), what="the assignment")
            await ok(f"aitbc admin drain {MINER}", admin)
            # a failed authentication over the address' budget: counted with the labels the doc gives
            for _ in range(2):
                assert (await sh("aitbc admin stats --api-key not-a-key-0000", env))[0] == 1
            spent = as_pattern(people_line("coordinator.rpc", "ADDRESS spent"))
            warned = await eventually(lambda: [x for x in first.lines if re.fullmatch(spent, x.get("msg", ""))],
                                      what="the failed-authentications warning")  # fmt: skip
            assert warned[0]["logger"] == "coordinator.rpc" and warned[0]["level"] == "warning", warned
            await check_metrics(metrics_port)

            first.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(first.proc.wait(), 60) == 0
        await first.reader
        stopping = people_line("coordinator", "SIGTERM: shutting down")
        assert first.said("SIGTERM: ") and re.fullmatch(
            as_pattern(stopping), first.said("SIGTERM: ")[0]["msg"]
        )
        # (SHUTTING_DOWN also when the miner, leaving on its go-away, cancels its call before the coordinator's
        # write of it returns: tests/integration/test_shutdown_disconnect_reason.py)
        disconnects = first.said("miner disconnected")
        assert [x["reason"] for x in disconnects] == ["DRAINED", "SHUTTING_DOWN"], disconnects
        assert first.lines[-1]["msg"] == people_line("coordinator", "coordinator stopped")

        async with serving(settings) as second:  # the new version: the same env file, the same store
            started = as_pattern(people_line("coordinator.scheduler", "scheduler started"))
            (rebuilt,) = [x["msg"] for x in second.said("scheduler started")]
            assert re.fullmatch(started, rebuilt) and rebuilt.startswith(
                "scheduler started: 1 active jobs, 0 queued"
            )
            assert second.said("scheduler: 1 operator drains kept from before the start")
            await eventually(lambda: second.said("miner connected", miner_id=MINER), what="the miner back")
            assert second.said("miner connected")[0]["kept"] == 1  # (`miner connected ... kept=K`)
            gate2.touch()
            assert await asyncio.wait_for(miners[1].wait(), 60) == 0  # drained to its end, across the restart
            done = json.loads(await ok(f"aitbc get {job2}", client))
            assert (done["state"], done["attempt"]) == ("JOB_STATE_COMPLETED", 1)
            again = json.loads(await ok("aitbc submit '{\"n\": 2}' --idempotency-key upgrade-1", client))
            assert again["job_id"] == job2  # step 4: the same job, not a second
            stats = json.loads(await ok("aitbc admin stats --json", admin))
            assert stats["jobs_by_state"]["completed"] == 2
            samples = await scrape(metrics_port)
            assert samples.value("aitbc_job_requeues_total", reason="MINER_GONE") == 0
    finally:
        for m in miners:
            if m.returncode is None:
                m.kill()
            await m.wait()
        # a runner outlives its killed miner (its own session): open its gate, or it waits for good (a failed run
        # left one spinning per run, loading the machine for every later test)
        gate1.touch()
        gate2.touch()


async def scrape(metrics_port: int) -> Samples:
    return Samples.parse(await asyncio.to_thread(fetch_text, f"http://127.0.0.1:{metrics_port}/metrics"))


async def check_metrics(metrics_port: int) -> None:
    """Every metric of the table exported under its name and type, with its labels and the values listed."""
    samples = await scrape(metrics_port)
    for metric in documented_metrics().values():
        family = samples.families.get(family_name(metric.name, metric.type))
        assert family is not None, f"{metric.name} is not exported"
        assert family.type == metric.type, f"{metric.name}: {family.type}, the doc says {metric.type}"
        series = [s for s in family.samples if s.name == metric.name or metric.type == "histogram"]
        assert series, metric.name
        for s in series:
            assert set(s.labels) - {"le"} == set(metric.labels), f"{metric.name}: labels {s.labels}"
        for label, values in metric.labels.items():
            if values:
                assert {s.labels[label] for s in series} == set(values), f"{metric.name}{{{label}}}"
        if metric.type == "histogram":
            assert {s.name for s in family.samples} == {
                f"{metric.name}_{x}" for x in ("bucket", "sum", "count")
            }
    assert mentioned_metrics() <= {n for m in documented_metrics().values() for n in [m.name]}
    limited = samples.labels_of("aitbc_rate_limited_requests_total")
    assert {"key": "anonymous", "group": "auth_failures"} in limited, limited


def check_event_lines(run: Serving) -> None:
    seen = 0
    for message, (event, fields) in event_rows().items():
        prefix = message.split(" http")[0]  # (`metrics on http://HOST:PORT/metrics`)
        lines = [x for x in run.said(prefix) if x.get("event") == event]
        if message.startswith(("job requeued", "job failed", "job canceled", "job expired", "tracing")):
            continue  # (not in this walk: tests/operability/test_ops_logs.py)
        assert lines, f"no {message!r} line with event {event}"
        for line in lines:
            for name, value in fields:
                assert name in line, f"{message}: no {name} in {line}"
                assert not value or str(line[name]) == value, f"{message}: {name}={line[name]}"
        seen += 1
    assert seen == 7, seen


async def test_the_serving_line_names_the_tls_miner_listener_and_the_main_listeners_security(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line named one listener, HOST:PORT, whatever else was listening: a TLS miner listener (a second
    port to open in the firewall) and /metrics were not said, nor whether the main one spoke TLS."""
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("coordinator.test", server=True)
    tls = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
    cases = [
        ({**tls, "tls_client_ca_file": str(pki.ca), "tls_miner_address": "127.0.0.1:0", "metrics_port": free_port()},
         "TLS", True, True),
        ({**tls, "tls_client_ca_file": str(pki.ca)}, "mutual TLS", False, False),
        (tls, "TLS", False, False),
    ]  # fmt: skip
    for n, (overrides, security, miners, metrics) in enumerate(cases):
        caplog.clear()
        (tmp_path / str(n)).mkdir()
        with caplog.at_level(logging.INFO, logger="coordinator"):
            coordinator = await start(make_settings(tmp_path / str(n), **overrides))
        try:
            (said,) = [r.getMessage() for r in caplog.records if " serving on " in r.getMessage()]
            expected = f"coordinator coord-local serving on 127.0.0.1:{coordinator.port} ({security})"
            if miners:
                expected += f", miners on 127.0.0.1:{coordinator.miner_port} (mutual TLS)"
            if metrics:
                expected += f", metrics on http://127.0.0.1:{overrides['metrics_port']}/metrics"
            assert said == f"{expected} (store sqlite:///{tmp_path / str(n) / 'coordinator.db'})"
            assert re.fullmatch(serving_pattern(), said), said
        finally:
            await coordinator.stop(grace=0)

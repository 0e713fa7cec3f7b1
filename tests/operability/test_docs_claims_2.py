"""The docs' claims about settings, ranges, SDK defaults and log lines, held to the code (helper-129).

The walkthrough tests run the docs' commands against a real coordinator; these read what an operator acts on
without running anything: the settings tables of the README and docs/operations.md (every setting named exists,
with the default given), .env.example (it names every setting, and the values it writes are the defaults), every
range the docs give a setting (both ends taken, just past either end refused), the values `LOG_LEVEL` takes, the
defaults docs/miners.md and the README give the miner and the CLI, and the lines of docs/operations.md's log table
for people (each one a string its logger's code writes), and docs/security.md's NUL rule. Read from the docs, so
that docs and code cannot drift.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from aitbc import miner
from aitbc.channel import open_channel
from aitbc.coordinator.v1 import job_service_pb2

from coordinator.config import DEFAULT_RATE_LIMITS, Settings, SettingsError, load_settings, parse_rate_limits
from coordinator.domain.errors import CoordinatorError
from coordinator.security.bounds import check_bounds
from tests.security.doc_walk_support import ROOT, section, table_rows

README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
SECURITY = (ROOT / "docs" / "security.md").read_text()
MINERS = (ROOT / "docs" / "miners.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()

FIELDS = {f.name.upper(): f for f in dataclasses.fields(Settings)}
SETTING = re.compile(r"`([A-Z][A-Z0-9_]+)`")
UNITS = {"": 1, "s": 1, "days": 86_400, "KiB": 1 << 10, "MiB": 1 << 20}


def default(name: str) -> object:
    return FIELDS[name].default


def as_setting(name: str, text: str) -> object:
    """A default as a doc writes it, in the setting's type ("empty": no value)."""
    value = default(name)
    if text == "empty":
        return type(value)()
    if isinstance(value, bool | str):
        return text
    return type(value)(text)


def settings_table(doc: str, title: str) -> list[tuple[list[str], list[str], str]]:
    """A settings table: (names, defaults, meaning) per row; one default given for several names is each's."""
    rows = []
    for cells in table_rows(section(doc, title)):
        names = SETTING.findall(cells[0])
        if not names or len(cells) != 3:
            continue
        given = re.sub(r" \(off\)$", "", cells[1])
        defaults = [d.strip().strip("`") for d in given.split(", ")]
        rows.append((names, defaults * len(names) if len(defaults) == 1 else defaults, cells[2]))
    return rows


@pytest.mark.parametrize(("doc", "title"), [(README, "Settings"), (OPERATIONS, "Settings")])
def test_the_settings_tables_name_settings_with_their_defaults(doc: str, title: str) -> None:
    rows = settings_table(doc, title)
    assert len(rows) >= 14, rows
    for names, defaults, _ in rows:
        assert len(names) == len(defaults), (names, defaults)
        for name, given in zip(names, defaults, strict=True):
            assert name in FIELDS, f"{name} is not a setting"
            assert as_setting(name, given) == default(name), (name, given, default(name))


def env_example_lines() -> dict[str, tuple[str, bool]]:
    """.env.example's settings: name -> (value as written, whether the line is commented out)."""
    found = {}
    for line in ENV_EXAMPLE.splitlines():
        match = re.match(r"(#\s?)?([A-Z][A-Z0-9_]+)=(\S*)", line)
        if match and match[2] in FIELDS and match[2] not in found:
            found[match[2]] = (match[3], bool(match[1]))
    return found


def test_env_example_names_every_setting_and_writes_the_defaults(tmp_path: Path) -> None:
    lines = env_example_lines()
    assert set(lines) == set(FIELDS), set(FIELDS) ^ set(lines)
    (tmp_path / ".env").write_text(ENV_EXAMPLE)
    written = load_settings(env={}, env_file=tmp_path / ".env")
    keys = {"CLIENT_API_KEYS", "MINER_API_KEYS", "ADMIN_API_KEYS"}  # the examples' own
    for name in set(FIELDS) - keys:
        assert getattr(written, name.lower()) == default(name), name
    # the commented-out examples: defaults too, but for paths and addresses (examples of a value to give)
    assert parse_rate_limits(lines["RATE_LIMITS"][0]) == DEFAULT_RATE_LIMITS
    for name, (value, commented) in lines.items():
        if commented and not name.endswith(("_FILE", "_ADDRESS")) and name != "RATE_LIMITS":
            assert load_settings(env={name: value}, env_file=None) == Settings(), name


# "(1 to 1000)", "(1 s to 7 days)", "(4 KiB to 256 MiB", "(1 000 to 10 000 000)", "at most 64 MiB"
NUMBER = r"\d+(?: \d{3})*(?:\.\d+)?"
RANGE = re.compile(
    rf"\((?P<lo>{NUMBER})(?: (?P<lu>s|KiB|MiB))? to (?P<hi>{NUMBER}) ?(?P<hu>s|days|KiB|MiB)?\b"
)
AT_MOST = re.compile(rf"at most (?P<hi>{NUMBER}) (?P<hu>KiB|MiB)\)")


def number(text: str, unit: str | None) -> float:
    return float(text.replace(" ", "")) * UNITS[unit or ""]


def documented_ranges() -> dict[str, set[tuple[float | None, float]]]:
    """Every range a doc gives a setting: in a settings table's row, or on its line of .env.example."""
    places: list[tuple[list[str], str]] = []
    for doc, title in ((README, "Settings"), (OPERATIONS, "Settings")):
        places += [(names, meaning) for names, _, meaning in settings_table(doc, title)]
    for cells in table_rows(section(SECURITY, "Limits")):
        places.append((SETTING.findall(cells[0]), " ".join(cells[1:])))
    for line in ENV_EXAMPLE.splitlines():
        match = re.match(r"#?\s?([A-Z][A-Z0-9_]+)=\S*\s*#(.*)", line)
        if match:
            places.append(([match[1]], match[2]))
    ranges: dict[str, set[tuple[float | None, float]]] = {}
    for names, text in places:
        found = [
            (number(m["lo"], m["lu"] or m["hu"]), number(m["hi"], m["hu"] or m["lu"]))
            for m in RANGE.finditer(text)
        ]
        found += [(None, number(m["hi"], m["hu"])) for m in AT_MOST.finditer(text)]
        if found and len(names) == 1:
            ranges.setdefault(names[0], set()).update(found)
    return ranges


def accepted(name: str, value: float) -> bool:
    kind = type(default(name))
    given = str(int(value)) if kind is int else repr(value)
    # room for the value tried: MAX_MESSAGE_BYTES at least MAX_PAYLOAD_BYTES
    env = {"MAX_PAYLOAD_BYTES": "1", "MAX_MESSAGE_BYTES": str(256 << 20), name: given}
    try:
        load_settings(env=env, env_file=None)
    except SettingsError as exc:
        assert name in str(exc), exc  # refused for this setting, not another
        return False
    return True


def test_every_documented_range_is_the_one_enforced() -> None:
    ranges = documented_ranges()
    expected = {"DATABASE_POOL_SIZE", "DATABASE_READ_TIMEOUT_SECONDS", "JOB_TTL_SECONDS", "JOB_MAX_ATTEMPTS",
                "JOB_EXECUTION_TIMEOUT_SECONDS", "MAX_PAYLOAD_BYTES", "MAX_MESSAGE_BYTES",
                "AUTH_FAILURE_PEER_CACHE_SIZE"}  # fmt: skip
    assert expected <= set(ranges), expected - set(ranges)
    for name, found in ranges.items():
        assert name in FIELDS, name
        integral = type(default(name)) is int
        for lo, hi in found:
            assert accepted(name, hi), (name, "its top", hi)
            assert not accepted(name, hi + 1 if integral else hi * 1.01), (name, "past its top", hi)
            if lo is not None:
                assert accepted(name, lo), (name, "its bottom", lo)
                assert not accepted(name, lo - 1 if integral else lo * 0.9), (name, "below its bottom", lo)


def test_the_settings_that_must_exceed_the_heartbeat_interval() -> None:
    """The README and .env.example: HEARTBEAT_TIMEOUT_SECONDS and LEASE_SECONDS exceed the interval."""
    assert "(> the interval)" in ENV_EXAMPLE and "(> HEARTBEAT_INTERVAL_SECONDS)" in ENV_EXAMPLE
    for name in ("HEARTBEAT_TIMEOUT_SECONDS", "LEASE_SECONDS"):
        with pytest.raises(SettingsError, match=name):
            load_settings(env={"HEARTBEAT_INTERVAL_SECONDS": "10", name: "10"}, env_file=None)
        load_settings(env={"HEARTBEAT_INTERVAL_SECONDS": "10", name: "10.5"}, env_file=None)


def test_log_level_takes_the_values_the_docs_list() -> None:
    (row,) = [
        meaning for names, _, meaning in settings_table(OPERATIONS, "Settings") if names == ["LOG_LEVEL"]
    ]
    listed = list(dict.fromkeys(re.findall(r"`([A-Z]+)`", row)))
    env_line = re.search(r"^LOG_LEVEL=\S+\s+# (.*)$", ENV_EXAMPLE, re.M)
    assert env_line and re.findall(r"[A-Z]{4,}", env_line[1]) == listed
    candidates = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL", "NOTSET")
    assert listed == [level for level in candidates if takes_log_level(level)]


def takes_log_level(level: str) -> bool:
    try:
        load_settings(env={"LOG_LEVEL": level}, env_file=None)
    except SettingsError:
        return False
    return True


def test_the_miner_defaults_the_docs_give() -> None:
    """docs/miners.md's `field`, N s pairs and constants, and the README's connection flags' defaults."""
    fields = {f.name: f.default for f in dataclasses.fields(miner.Miner)}
    pairs = re.findall(r"`(\w+_s)`,? \(?(\d+(?:\.\d+)?) s", MINERS)
    pairs += re.findall(r"`(\w+_s)` \((\d+(?:\.\d+)?) s\)", MINERS)
    assert {
        "stuck_timeout_s",
        "backoff_max_s",
        "drain_ack_timeout_s",
        "welcome_timeout_s",
        "poll_wait_s",
    } <= {name for name, _ in pairs}, pairs
    for name, seconds in pairs:
        assert fields[name] == float(seconds), (name, seconds)
    assert re.search(r"0\.5 s after it started \(`ACCEPT_AFTER_S`\)", MINERS) and miner.ACCEPT_AFTER_S == 0.5
    assert "`max_result_bytes` (8 MiB less 64 KiB)" in MINERS and fields["max_result_bytes"] == (8 << 20) - (
        64 << 10
    )
    # the CLI's connection flags (README: "--keepalive SECONDS (more than 5; default 20), --keepalive-timeout
    # SECONDS (10) and --reconnect-max SECONDS (1 or more; 5) ... miner run also takes --welcome-timeout (20)")
    flags = dict(re.findall(r"`--([a-z-]+) SECONDS` \((?:[^()]*;\s+)?(?:default\s+)?(\d+)\)", README))
    assert set(flags) == {"keepalive", "keepalive-timeout", "reconnect-max", "welcome-timeout"}, flags
    defaults = {"keepalive": 20.0, "keepalive-timeout": 10.0, "reconnect-max": 5.0}
    channel = inspect.signature(open_channel).parameters
    assert {k: channel[v].default for k, v in
            (("keepalive", "keepalive_s"), ("keepalive-timeout", "keepalive_timeout_s"),
             ("reconnect-max", "reconnect_max_s"))} == defaults  # fmt: skip
    for flag, seconds in flags.items():
        want = fields["welcome_timeout_s"] if flag == "welcome-timeout" else defaults[flag]
        assert float(seconds) == want, (flag, seconds)


# ---------------------------------------------------------------------- log lines
PLACEHOLDER = re.compile(
    r"\.\.\.|\b(?:ID|ADDRESS|N|M|K|HOST|PORT|URL|SECURITY|S|PATH|METHOD|ERROR|KEYID|SIGTERM)\b"
)


def logger_strings() -> dict[str, list[str]]:
    """Logger name -> the string constants of the modules logging under it (an f-string's parts apart)."""
    found: dict[str, list[str]] = {}
    for path in (ROOT / "coordinator").rglob("*.py"):
        tree = ast.parse(path.read_text())
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        names = {
            module if isinstance(arg, ast.Name) else arg.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "getLogger" and node.args
            for arg in node.args[:1]
            if isinstance(arg, ast.Name) or isinstance(arg, ast.Constant)
        }
        strings = [
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        for name in names:
            found.setdefault(str(name), []).extend(strings)
    return found


def test_the_log_lines_for_people_are_written_by_their_loggers() -> None:
    strings = logger_strings()
    rows = [
        c for c in table_rows(section(OPERATIONS, "Logs")) if len(c) == 3 and c[0].startswith("`coordinator")
    ]
    assert len(rows) >= 20, rows
    for cells in rows:
        line = re.match(r"`([^`]*)`", cells[1])[1]  # type: ignore[index]
        if " serving on " in line:
            continue  # assembled from parts: tests/operability/test_ops_doc_walkthrough.py reads it at a start
        for logger in re.findall(r"`([\w.]+)`", cells[0]):
            assert logger in strings, f"no module logs as {logger}"
            for fragment in PLACEHOLDER.split(line):
                fragment = fragment.strip(" :(),")
                if len(re.sub(r"\W", "", fragment)) >= 3:
                    assert written(fragment, strings[logger]), (logger, fragment)


def written(fragment: str, strings: list[str]) -> bool:
    """Whether some string holds fragment, or fragment is one string's text before its `%s` followed by the start
    of another (`"store writer: %s"` with the message of an exception made elsewhere)."""
    if any(fragment in s for s in strings):
        return True
    return any(
        f"{fragment[:cut]}%s" in s and any(t.startswith(fragment[cut:]) for t in strings)
        for cut in range(1, len(fragment))
        for s in strings
    )


def test_no_string_holds_a_nul_as_the_security_doc_says() -> None:
    """docs/security.md's field bounds: a NUL in any string is refused (INVALID_REQUEST, its field named)."""
    assert "no string holds a NUL character (U+0000)" in SECURITY
    with pytest.raises(CoordinatorError) as refused:
        check_bounds(job_service_pb2.CancelJobRequest(job_id="j", reason="a\x00b"))
    assert refused.value.reason == "INVALID_REQUEST" and "reason" in str(refused.value)
    check_bounds(job_service_pb2.CancelJobRequest(job_id="j", reason="ab"))

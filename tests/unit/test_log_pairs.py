"""Text log lines: the fields are checked for quoting once per line, not once per value, and every line is the
text it was when each value was checked alone (values with a space, quote, `=`, tab or newline, and empty
ones, JSON-quoted; the rest as they are)."""

from __future__ import annotations

import enum
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.domain.model import JobState
from coordinator.logs import TextFormatter

TS, LEVEL, LOGGER, MSG = "2026-11-27T10:00:00.000Z", "INFO", "coordinator.jobs", "job completed"


def per_value_line(extra: dict[str, object]) -> str:
    """The formatter as it was: one regex search per value."""

    def text(value: object) -> str:
        s = str(value)
        return json.dumps(s) if not s or re.search(r'[ "=\n\t]', s) else s

    pairs = " ".join(f"{k}={text(v)}" for k, v in extra.items() if v is not None)
    head = f"ts={TS} level={LEVEL} logger={LOGGER} {MSG}"
    return f"{head} {pairs}" if pairs else head


class Color(enum.Enum):
    RED = "r e d"


class Level(enum.IntEnum):
    HIGH = 3


JOB_LINE: dict[str, object] = {
    "event": "job.transition", "job_id": "019ac1e2-3f4a-7b5c-8d6e-0123456789ab", "client_id": "bench-client",
    "miner_id": "miner-00017", "from_state": "RUNNING", "to_state": "COMPLETED", "attempt": 1,
    "reason": "COMPLETED", "request_id": "019ac1e2-3f4a-7b5c-8d6e-0123456789ac",
}  # fmt: skip
QUOTED = ["m 1", 'a"b', "k=v", "two\nlines", "tab\there", "", " ", "=", "x=", "=x", "é ü"]
PLAIN = ["m1", "é", "-", "a:b/c", "{}", "'single'", "\\", "\r", "None", "0"]


@pytest.mark.parametrize(
    "value", QUOTED + PLAIN + [0, -3, 2.5, True, JobState.RUNNING, Color.RED, Level.HIGH]
)
@pytest.mark.parametrize("where", ["first", "middle", "last", "alone"])
def test_a_job_line_is_the_same_text_whatever_one_value_holds(value: object, where: str) -> None:
    extra = dict(JOB_LINE)
    if where == "alone":
        extra = {"miner_id": value}
    else:
        key = {"first": "event", "middle": "miner_id", "last": "request_id"}[where]
        extra[key] = value
    line = TextFormatter.line(TS, LEVEL, LOGGER, MSG, extra)
    assert line == per_value_line(extra)
    if isinstance(value, str) and value in QUOTED:
        assert json.dumps(value) in line  # (the case a quoting shortcut would get wrong)


@pytest.mark.parametrize(
    "extra",
    [{}, {"a": None}, {"a": None, "b": "x"}, {"a b": "x"}, {"a=": "x"}, {"": "x"}, {"": ""}, {'k"': "v"},
     {"k": "v", "x": None, "y": ""}],
    ids=repr,
)  # fmt: skip
def test_odd_keys_and_no_fields(extra: dict[str, object]) -> None:
    assert TextFormatter.line(TS, LEVEL, LOGGER, MSG, extra) == per_value_line(extra)


keys = st.one_of(
    st.sampled_from([*JOB_LINE, "detail", "trace_id", "priority"]), st.text(max_size=6)
)  # fmt: skip
values = st.one_of(
    st.none(), st.integers(), st.booleans(), st.floats(allow_nan=False),
    st.sampled_from(QUOTED + PLAIN + [JobState.QUEUED, Color.RED, Level.HIGH]),
    st.text(st.sampled_from('ab =\n\t"é\\x'), max_size=8), st.text(max_size=12),
)  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(keys, values, max_size=12))
def test_generated_lines_are_the_same_text(extra: dict[str, object]) -> None:
    assert TextFormatter.line(TS, LEVEL, LOGGER, MSG, extra) == per_value_line(extra)

"""`aitbc submit-many` splits its input at newlines only (JSON Lines): a JSON string may hold U+2028, U+2029 or
U+0085 unescaped (json.dumps(..., ensure_ascii=False) writes them so), and str.splitlines() took each for a line
break, refusing the line as "not JSON" (exit 2) and numbering the lines after it (their KEY-LINE) off by one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aitbc import cli
from coord_support import CLIENT_KEYS, Harness

# inputs whose text holds the characters str.splitlines() breaks at but JSON Lines does not
INPUTS = [{"text": "para one\u2028para two"}, {"text": "a\u2029b"}, {"text": "next\x85line"}, {"n": 4}]


async def test_unescaped_unicode_line_separators_stay_inside_their_json_line(
    coord: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in INPUTS), encoding="utf-8")
    argv = ["submit-many", str(path), "--idempotency-key", "sep", "--address", coord.address]
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, [*argv, "--api-key", CLIENT_KEYS["alice"]])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), err
    jobs = [json.loads(line) for line in out.split("\n") if line]
    assert [j["idempotency_key"] for j in jobs] == ["sep-1", "sep-2", "sep-3", "sep-4"]  # one line per job
    alice = coord.client("alice")
    assert [cli.message_json((await alice.get(j["job_id"])).payload) for j in jobs] == INPUTS

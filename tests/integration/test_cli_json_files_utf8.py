"""The CLI reads JSON inputs as UTF-8 (RFC 8259), whatever the locale, and takes a file that begins with a byte
order mark (as Windows editors save UTF-8): `aitbc submit @FILE` and `aitbc submit-many FILE` refused such a file
("Unexpected UTF-8 BOM"), exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aitbc import cli
from coord_support import QUEUED, Harness
from test_cli_submit_many import aitbc, auth, printed

BOM = b"\xef\xbb\xbf"


async def test_a_payload_file_with_a_byte_order_mark_is_submitted(
    coord: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(BOM + '{"prompt": "héllo ☃"}'.encode())
    code, out, err = await aitbc(capsys, "submit", f"@{path}", *auth(coord.address))
    assert (code, err) == (0, ""), err
    job = json.loads(out)  # (one job, printed as a JSON document)
    got = await coord.client("alice").get(job["job_id"])
    assert got.state == QUEUED and cli.message_json(got.payload) == {"prompt": "héllo ☃"}


async def test_a_json_lines_file_with_a_byte_order_mark_and_crlf_lines_is_submitted(
    coord: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(BOM + '{"n": 1}\r\n{"text": "ünïcode"}\r\n'.encode())
    code, out, err = await aitbc(capsys, "submit-many", str(path), *auth(coord.address))
    assert (code, err) == (0, ""), err
    jobs = printed(out)
    alice = coord.client("alice")
    assert [cli.message_json((await alice.get(j["job_id"])).payload) for j in jobs] == [
        {"n": 1},
        {"text": "ünïcode"},
    ]


async def test_a_file_that_is_not_utf8_is_refused_with_exit_2(
    coord: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    code, _, err = await aitbc(capsys, "submit-many", str(path), *auth(coord.address))
    assert code == 2 and "utf-8" in err.lower(), err

"""The read side of the Store, written once in SQL both backends run.

Queries use `?` placeholders; a backend's `_query` runs them (PostgreSQL numbers them `$1, $2, ...`), and its
`_load` the bulk reads of a start (every live job, the receipt log's tiles), which may take far longer than a call's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..domain.model import Event, Job, JobResult, JobState, PayloadKind
from .base import (
    EVENT_COLUMNS,
    JOB_COLUMNS,
    NANO_SPLIT,
    CheckpointRow,
    JobFilter,
    JobPage,
    KeyRow,
    ReceiptRow,
    Store,
    event_from_row,
    job_from_row,
    tally_transitions,
)


def numbered(sql: str) -> str:
    """`?` placeholders as `$1, $2, ...` (PostgreSQL). Our queries hold no `?` inside literals."""
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], start=1)) + parts[-1]


KEYS_PER_LOOKUP = (
    500  # idempotency keys per query (well within SQLite's and PostgreSQL's bound on parameters)
)
# A client's jobs on a miner (admin ListJobs, both filters): the miner's index entries one call examines per state.
# No index holds both (one more would cost the writer on every state change), so a call walks the miner's and may
# stop short of a full page (_page_of_client_on_miner).
SCAN_CAP = 1000


def _where(conditions: list[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


def _page_by_state(
    where: list[str], params: list[Any], states: Sequence[JobState], limit: int
) -> tuple[str, list[Any]]:
    """A page of jobs (newest first) in some states: per state, the keys of its newest `limit` jobs, each a backward
    walk of an index ending in (state, job_id) (schema 8: jobs_client_state, jobs_miner_state, jobs_state), then
    the page's rows by key. So a page reads at most a page of index entries per state, whatever the history: with
    `state IN (...)` a client's page walked its whole history (jobs_client) or every job in the states (jobs_state).
    Keys first: a branch's rows not in the page are never read (payloads of up to 1 MiB each)."""
    branches: list[str] = []
    args: list[Any] = []
    condition = _where([*where, "state = ?"])
    for i, state in enumerate(states):
        branches.append(
            f"SELECT job_id FROM (SELECT job_id FROM jobs {condition} ORDER BY job_id DESC LIMIT ?) AS s{i}"
        )
        args.extend([*params, int(state), limit])
    keys = f"{' UNION ALL '.join(branches)} ORDER BY job_id DESC LIMIT ?"
    sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id IN ({keys}) ORDER BY job_id DESC"
    return sql, [*args, limit]


def _walk_of_miner(state_walk: int, before: str | None) -> str:
    """The newest SCAN_CAP keys (and clients) of a miner's jobs in a state, below the page's start: a backward
    walk of jobs_miner_state."""
    below = " AND job_id < ?" if before else ""
    return (
        f"SELECT job_id, client_id, {state_walk} AS walk FROM (SELECT job_id, client_id FROM jobs "
        f"WHERE miner_id = ? AND state = ?{below} ORDER BY job_id DESC LIMIT ?) AS w{state_walk}"
    )


def _page_of_client_on_miner(
    client_id: str, miner_id: str, states: Sequence[JobState], limit: int, before: str | None
) -> tuple[str, list[Any]]:
    """A page of a client's jobs on a miner, newest first, each row ending with the frontier (NULL if none): per
    state, at most SCAN_CAP of the miner's index entries are examined and the client's kept. Where a walk hit
    the cap, what lies below it is unknown: the page stops at the frontier, the largest of the lowest ids of the
    walks that hit it. Every matching job from the frontier up is known (each walk went down to it at least),
    none below it is listed. One row with the frontier and NULL columns when the page is empty. Keys first, as in
    _page_by_state: rows not in the page are never read whole (only their client_id, to filter)."""
    walks: list[str] = []
    args: list[Any] = []
    for i, state in enumerate(states):
        walks.append(_walk_of_miner(i, before))
        args.extend([miner_id, int(state), *([before] if before else []), SCAN_CAP])
    sql = (
        f"WITH walked AS ({' UNION ALL '.join(walks)}), "
        "frontier AS (SELECT max(lowest) AS edge FROM (SELECT min(job_id) AS lowest FROM walked "
        "GROUP BY walk HAVING count(*) = ?) AS capped) "
        f"SELECT page.*, frontier.edge FROM frontier LEFT JOIN (SELECT {JOB_COLUMNS} FROM jobs WHERE job_id IN "
        "(SELECT job_id FROM walked, frontier WHERE client_id = ? AND (edge IS NULL OR job_id >= edge) "
        "ORDER BY job_id DESC LIMIT ?)) AS page ON TRUE ORDER BY page.job_id DESC"
    )
    return sql, [*args, SCAN_CAP, client_id, limit]


class SqlReads(Store):
    async def _query(self, sql: str, *params: Any) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def _load(self, sql: str, *params: Any) -> Sequence[Sequence[Any]]:
        """A bulk read (the whole of a table's live part): by default, as any read."""
        return await self._query(sql, *params)

    async def get_job(self, job_id: str) -> Job | None:
        rows = await self._query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", job_id)
        return job_from_row(rows[0]) if rows else None

    async def find_by_idempotency_keys(self, client_id: str, keys: Sequence[str]) -> dict[str, Job]:
        found: dict[str, Job] = {}
        for i in range(0, len(keys), KEYS_PER_LOOKUP):
            chunk = list(keys[i : i + KEYS_PER_LOOKUP])
            rows = await self._query(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE client_id = ? AND idempotency_key IN "
                f"({','.join('?' * len(chunk))})",
                client_id,
                *chunk,
            )
            for row in rows:
                job = job_from_row(row)
                found[job.idempotency_key] = job
        return found

    async def count_idempotency_keys(self) -> int:
        # a bulk read: it counts the whole index (seconds on a large or cold PostgreSQL store)
        rows = await self._load("SELECT count(*) FROM jobs WHERE idempotency_key IS NOT NULL")
        return int(rows[0][0])

    async def idempotency_keys_after(
        self, after: tuple[str, str] | None, limit: int
    ) -> list[tuple[str, str]]:
        # Pages in the order of the unique index (client_id, idempotency_key): each page is one short read.
        if after is None:
            rows = await self._query(
                "SELECT client_id, idempotency_key FROM jobs WHERE idempotency_key IS NOT NULL "
                "ORDER BY client_id, idempotency_key LIMIT ?",
                limit,
            )
        else:
            rows = await self._query(
                "SELECT client_id, idempotency_key FROM jobs WHERE idempotency_key IS NOT NULL "
                "AND (client_id, idempotency_key) > (?, ?) ORDER BY client_id, idempotency_key LIMIT ?",
                after[0],
                after[1],
                limit,
            )
        return [(r[0], r[1]) for r in rows]

    async def list_jobs(self, flt: JobFilter, limit: int, before_job_id: str | None) -> JobPage:
        # none asked: all seven (no index orders a client's or a miner's jobs by job_id alone)
        states = sorted(flt.states) or list(JobState)
        if flt.client_id is not None and flt.miner_id is not None:
            return await self._list_client_on_miner(flt.client_id, flt.miner_id, states, limit, before_job_id)
        where: list[str] = []
        params: list[Any] = []
        if flt.client_id is not None:
            where.append("client_id = ?")
            params.append(flt.client_id)
        if flt.miner_id is not None:
            where.append("miner_id = ?")
            params.append(flt.miner_id)
        if before_job_id:
            where.append("job_id < ?")
            params.append(before_job_id)
        if flt.client_id is None and flt.miner_id is None and not flt.states:  # the jobs' own key, backward
            sql = f"SELECT {JOB_COLUMNS} FROM jobs {_where(where)} ORDER BY job_id DESC LIMIT ?"
            return JobPage([job_from_row(r) for r in await self._query(sql, *params, limit)])
        sql, args = _page_by_state(where, params, states, limit)
        return JobPage([job_from_row(r) for r in await self._query(sql, *args)])

    async def _list_client_on_miner(
        self, client_id: str, miner_id: str, states: Sequence[JobState], limit: int, before: str | None
    ) -> JobPage:
        sql, args = _page_of_client_on_miner(client_id, miner_id, states, limit, before)
        rows = await self._query(sql, *args)
        frontier = rows[0][-1] if rows else None
        return JobPage([job_from_row(r) for r in rows if r[0] is not None], frontier)

    async def load_active_jobs(self) -> list[Job]:
        rows = await self._load(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN (1, 2, 3) ORDER BY job_id")
        return [job_from_row(r) for r in rows]

    async def get_result(self, job_id: str) -> JobResult | None:
        rows = await self._query(
            "SELECT job_id, attempt, output, output_kind, result_sha256, units, unit_type, miner_id, "
            "completed_us, receipt_id FROM job_results WHERE job_id = ? ORDER BY attempt DESC LIMIT 1",
            job_id,
        )
        if not rows:
            return None
        r = rows[0]
        return JobResult(r[0], r[1], r[2], PayloadKind(r[3]), r[4], r[5], r[6], r[7], r[8], r[9])

    async def get_events(self, job_id: str) -> list[Event]:
        rows = await self._query(
            f"SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = ? ORDER BY sequence", job_id
        )
        return [event_from_row(r) for r in rows]

    async def count_by_state(self) -> dict[JobState, int]:
        # (kept by each commit, schema 7: a row per state, where counting the jobs read the whole jobs index)
        rows = await self._query("SELECT state, jobs FROM job_state_counts WHERE jobs <> 0")
        return {JobState(state): int(count) for state, count in rows}

    async def count_transitions_since(self, since_us: int) -> dict[str, int]:
        rows = await self._query(
            "SELECT to_state, from_state IS NULL, count(*) FROM job_events WHERE occurred_us >= ? "
            "AND (from_state IS NULL OR to_state >= 4) GROUP BY to_state, from_state IS NULL",
            since_us,
        )
        return tally_transitions(rows)

    async def count_transitions_by_second(
        self, since_us: int, until_us: int
    ) -> list[tuple[int, int, bool, int]]:
        rows = await self._load(
            "SELECT occurred_us / 1000000, to_state, from_state IS NULL, count(*) FROM job_events "
            "WHERE occurred_us >= ? AND occurred_us < ? AND (from_state IS NULL OR to_state >= 4) "
            "GROUP BY occurred_us / 1000000, to_state, from_state IS NULL",
            since_us,
            until_us,
        )
        return [
            (int(second), int(to_state), bool(submitted), int(n)) for second, to_state, submitted, n in rows
        ]

    async def get_receipts(self, job_id: str) -> list[ReceiptRow]:
        rows = await self._query(
            "SELECT r.receipt_id, r.job_id, r.attempt, r.envelope, r.leaf_index, l.leaf_hash, r.issued_us "
            "FROM receipts r JOIN log_leaves l USING (leaf_index) WHERE r.job_id = ? ORDER BY r.leaf_index",
            job_id,
        )
        return [ReceiptRow(*r) for r in rows]

    async def load_log_tiles(self) -> tuple[list[bytes], CheckpointRow | None]:
        rows = await self._load("SELECT tile_index, tile_hash FROM log_tiles ORDER BY tile_index")
        tiles: list[bytes] = []
        for index, root in rows:
            if index != len(tiles):  # a tile's write lost (a crash): from there on, the leaves are read
                break
            tiles.append(bytes(root))
        cps = await self._query(
            "SELECT tree_size, root_hash, note, signed_us FROM checkpoints ORDER BY tree_size DESC LIMIT 1"
        )
        return tiles, (CheckpointRow(*cps[0]) if cps else None)

    async def read_leaves(self, start: int, end: int) -> list[bytes]:
        rows = await self._query(
            "SELECT leaf_hash FROM log_leaves WHERE leaf_index >= ? AND leaf_index < ? ORDER BY leaf_index",
            start,
            end,
        )
        return [bytes(row[0]) for row in rows]

    async def load_keys(self) -> list[KeyRow]:
        rows = await self._load(
            "SELECT key_id, role, status, public_key, private_seed, valid_from_us, valid_until_us, owner "
            "FROM signing_keys ORDER BY valid_from_us"
        )
        return [KeyRow(*r) for r in rows]

    async def load_accounts(self) -> list[dict[str, Any]]:
        rows = await self._load(
            "SELECT account_id, kind, amount_whole, amount_rest, receipts, units_whole, units_rest, updated_us "
            "FROM account_balances"
        )
        return [
            {"account_id": r[0], "kind": r[1], "balance_nano": r[2] * NANO_SPLIT + r[3], "receipts": r[4],
             "units_nano": r[5] * NANO_SPLIT + r[6], "updated_us": r[7]}
            for r in rows
        ]  # fmt: skip

    async def receipt_booked(self, receipt_id: str) -> bool:
        return bool(
            await self._query("SELECT 1 FROM ledger_entries WHERE receipt_id = ? LIMIT 1", receipt_id)
        )

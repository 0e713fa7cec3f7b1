"""The schema, as forward migrations applied in order at start-up: SQLite (PRAGMA user_version tracks them)
and PostgreSQL (the table schema_version does)."""

from __future__ import annotations

import os
import socket

# The tables migrations 1 and 2 made append-only (their text must not change: a store is the migrations it ran)
_APPEND_ONLY_AT_2 = ("job_events", "receipts", "log_leaves", "checkpoints", "ledger_entries")
APPEND_ONLY = (*_APPEND_ONLY_AT_2, "log_tiles")  # every append-only table


def _append_only(table: str) -> str:
    return f"""
CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
"""


MIGRATIONS: list[str] = [
    # 1: jobs, their event log and results
    """
CREATE TABLE jobs (
  job_id TEXT PRIMARY KEY,
  client_id TEXT NOT NULL,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  payload BLOB NOT NULL,
  payload_kind INTEGER NOT NULL,
  input_sha256 BLOB NOT NULL,
  constraints TEXT NOT NULL,
  ttl_us INTEGER NOT NULL,
  max_attempts INTEGER NOT NULL,
  execution_timeout_us INTEGER NOT NULL,
  idempotency_key TEXT,
  request_fingerprint BLOB NOT NULL,
  created_us INTEGER NOT NULL,
  updated_us INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  miner_id TEXT NOT NULL,
  started_us INTEGER NOT NULL,
  finished_us INTEGER NOT NULL,
  terminal_reason TEXT NOT NULL,
  terminal_message TEXT NOT NULL,
  metadata TEXT NOT NULL,
  reassignments INTEGER NOT NULL,
  event_seq INTEGER NOT NULL,
  not_before_us INTEGER NOT NULL,
  queued_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX jobs_idempotency ON jobs(client_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_client ON jobs(client_id, job_id);
CREATE INDEX jobs_miner ON jobs(miner_id, job_id);
CREATE INDEX jobs_state ON jobs(state);
CREATE TABLE job_events (
  job_id TEXT NOT NULL,
  sequence INTEGER NOT NULL,
  from_state INTEGER,
  to_state INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  miner_id TEXT NOT NULL,
  reason TEXT NOT NULL,
  message TEXT NOT NULL,
  occurred_us INTEGER NOT NULL,
  PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE INDEX job_events_time ON job_events(occurred_us);
CREATE TABLE job_results (
  job_id TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  output BLOB NOT NULL,
  output_kind INTEGER NOT NULL,
  result_sha256 BLOB NOT NULL,
  units TEXT NOT NULL,
  unit_type TEXT NOT NULL,
  miner_id TEXT NOT NULL,
  completed_us INTEGER NOT NULL,
  receipt_id TEXT NOT NULL,
  PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;
"""
    + _append_only("job_events"),
    # 2: receipts, the Merkle log, checkpoints, signing keys, the usage ledger
    """
CREATE TABLE receipts (
  receipt_id TEXT PRIMARY KEY,
  job_id TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  envelope BLOB NOT NULL,
  leaf_index INTEGER NOT NULL UNIQUE,
  issued_us INTEGER NOT NULL,
  UNIQUE (job_id, attempt)
);
CREATE TABLE log_leaves (
  leaf_index INTEGER PRIMARY KEY,
  leaf_hash BLOB NOT NULL
);
CREATE TABLE checkpoints (
  tree_size INTEGER PRIMARY KEY,
  root_hash BLOB NOT NULL,
  note TEXT NOT NULL,
  signed_us INTEGER NOT NULL
);
CREATE TABLE signing_keys (
  key_id TEXT PRIMARY KEY,
  role TEXT NOT NULL,
  status TEXT NOT NULL,
  public_key BLOB NOT NULL,
  private_seed BLOB,
  valid_from_us INTEGER NOT NULL,
  valid_until_us INTEGER,
  owner TEXT NOT NULL DEFAULT ''
);
CREATE TABLE ledger_entries (
  entry_id INTEGER PRIMARY KEY,
  account_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  receipt_id TEXT NOT NULL,
  amount_nano INTEGER NOT NULL,
  units_nano INTEGER NOT NULL,
  booked_us INTEGER NOT NULL,
  UNIQUE (receipt_id, kind)
);
CREATE INDEX ledger_account ON ledger_entries(account_id, kind);
"""
    + "".join(_append_only(t) for t in _APPEND_ONLY_AT_2[1:]),
    # 3: the store's holder epoch (fencing): every process that takes the store bumps it before writing
    """
CREATE TABLE store_holder (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  epoch INTEGER NOT NULL,
  holder TEXT NOT NULL,
  taken_us INTEGER NOT NULL
);
INSERT INTO store_holder VALUES (1, 0, '', 0);
""",
    # 4: operators' drains of miners (AdminService.DrainMiner), kept across restarts: a row from the drain until it
    # is over (the miner's session drained to the end, or the miner away past its grace period). created_us, when
    # the operator drained it (UTC microseconds), names the drain: the end of an earlier drain of the same miner
    # deletes only its own row.
    """
CREATE TABLE operator_drains (
  miner_id TEXT PRIMARY KEY,
  reason TEXT NOT NULL,
  created_us INTEGER NOT NULL
) WITHOUT ROWID;
""",
    # 5: the receipt log's complete tiles (coordinator/receipts/tiled_log.py): the root of each aligned run of 256
    # leaves, so a start reads the tiles and the leaves after them, not every leaf. Derived from log_leaves, written
    # after them: a tile missing (its write lost) is hashed again from its leaves at the next start.
    """
CREATE TABLE log_tiles (
  tile_index INTEGER PRIMARY KEY,
  tile_hash BLOB NOT NULL
);
"""
    + _append_only("log_tiles"),
    # 6: each account's balance, kept with its ledger entries (the same commit adds a group's entries to it), so a
    # start reads a row per account, not every entry ever booked (~2 s a million receipts). Derived from
    # ledger_entries, which stays the record. Amounts as whole units and the nano rest, each summed apart (a
    # balance may pass a BIGINT of nano units; each entry fits one): amount_nano = amount_whole * 10^9 + amount_rest.
    """
CREATE TABLE account_balances (
  account_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  amount_whole INTEGER NOT NULL,
  amount_rest INTEGER NOT NULL,
  receipts INTEGER NOT NULL,
  units_whole INTEGER NOT NULL,
  units_rest INTEGER NOT NULL,
  updated_us INTEGER NOT NULL,
  PRIMARY KEY (account_id, kind)
) WITHOUT ROWID;
INSERT INTO account_balances
  SELECT account_id, kind, sum(amount_nano / 1000000000), sum(amount_nano % 1000000000), count(*),
         sum(units_nano / 1000000000), sum(units_nano % 1000000000), max(booked_us)
  FROM ledger_entries GROUP BY account_id, kind;
""",
    # 7: how many jobs are in each state, kept with the jobs (each commit adds its rows' moves: +1 to the state a job
    # enters, -1 to the one it leaves, summed per state), so GetStats reads a row per state, not the jobs index (~0.1 s
    # per 2M jobs, on the one reader, at every call). Derived from jobs, which stays the record. Not triggers: on
    # PostgreSQL a row trigger rewrites a count's row once per job, and a large group's versions of that row pile up
    # (per job 49 / 91 / 171 us at 500 / 2,000 / 8,000 jobs a transaction); in SQLite they cost ~4 us a row.
    """
CREATE TABLE job_state_counts (
  state INTEGER PRIMARY KEY,
  jobs INTEGER NOT NULL
);
INSERT INTO job_state_counts SELECT state, count(*) FROM jobs GROUP BY state;
""",
    # 8: a page of a client's (or a miner's) jobs, newest first, read from an index in that order, one state at a
    # time (sql_reads.list_jobs): jobs_client and jobs_miner become (client_id|miner_id, state, job_id). Replaced, not
    # added beside: every index on jobs costs each insert and state change of the hot path. With jobs_client a page
    # of a client's jobs in some states read the client's whole history. (jobs_state ends in job_id already: an index
    # of a WITHOUT ROWID table ends with its key.) Built at the first start of this version, before it serves: about
    # 4-5 s per million jobs. The cost: a state change now moves an entry of jobs_client_state too (jobs_client
    # held no state): ~+25 % of the writer's CPU over a job's life, measured on SQLite.
    """
DROP INDEX jobs_client;
DROP INDEX jobs_miner;
CREATE INDEX jobs_client_state ON jobs(client_id, state, job_id);
CREATE INDEX jobs_miner_state ON jobs(miner_id, state, job_id);
""",
]


# --- PostgreSQL ---------------------------------------------------------------------------------------
# The same tables, migration for migration (POSTGRES_MIGRATIONS[i] is the twin of MIGRATIONS[i]): INTEGER
# becomes BIGINT, BLOB becomes BYTEA. The table schema_version records the migrations applied. A start runs every
# pending one in one transaction; a start refused after making a new store drops what that transaction made, as
# the catalog records it (postgres.py, _MADE_HERE): make objects in the store's schema (names unqualified), and not
# inside a SAVEPOINT or a DO block's EXCEPTION clause (a subtransaction: a refused start would leave them behind).

PG_APPEND_ONLY_FUNCTION = """
CREATE FUNCTION aitbc_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;
"""


def _pg_append_only(table: str) -> str:
    return f"""
CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
  FOR EACH ROW EXECUTE FUNCTION aitbc_append_only();
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
  FOR EACH STATEMENT EXECUTE FUNCTION aitbc_append_only();
"""


POSTGRES_MIGRATIONS: list[str] = [
    # 1: jobs, their event log and results
    """
CREATE TABLE jobs (
  job_id TEXT COLLATE "C" PRIMARY KEY,  -- byte order, as SQLite: paging by job_id
  client_id TEXT NOT NULL,
  state BIGINT NOT NULL,
  priority BIGINT NOT NULL,
  payload BYTEA NOT NULL,
  payload_kind BIGINT NOT NULL,
  input_sha256 BYTEA NOT NULL,
  constraints TEXT NOT NULL,
  ttl_us BIGINT NOT NULL,
  max_attempts BIGINT NOT NULL,
  execution_timeout_us BIGINT NOT NULL,
  idempotency_key TEXT,
  request_fingerprint BYTEA NOT NULL,
  created_us BIGINT NOT NULL,
  updated_us BIGINT NOT NULL,
  attempt BIGINT NOT NULL,
  miner_id TEXT NOT NULL,
  started_us BIGINT NOT NULL,
  finished_us BIGINT NOT NULL,
  terminal_reason TEXT NOT NULL,
  terminal_message TEXT NOT NULL,
  metadata TEXT NOT NULL,
  reassignments BIGINT NOT NULL,
  event_seq BIGINT NOT NULL,
  not_before_us BIGINT NOT NULL,
  queued_us BIGINT NOT NULL
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(client_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_client ON jobs(client_id, job_id);
CREATE INDEX jobs_miner ON jobs(miner_id, job_id);
CREATE INDEX jobs_state ON jobs(state);
CREATE TABLE job_events (
  job_id TEXT NOT NULL,
  sequence BIGINT NOT NULL,
  from_state BIGINT,
  to_state BIGINT NOT NULL,
  attempt BIGINT NOT NULL,
  miner_id TEXT NOT NULL,
  reason TEXT NOT NULL,
  message TEXT NOT NULL,
  occurred_us BIGINT NOT NULL,
  PRIMARY KEY (job_id, sequence)
);
CREATE INDEX job_events_time ON job_events(occurred_us);
CREATE TABLE job_results (
  job_id TEXT NOT NULL,
  attempt BIGINT NOT NULL,
  output BYTEA NOT NULL,
  output_kind BIGINT NOT NULL,
  result_sha256 BYTEA NOT NULL,
  units TEXT NOT NULL,
  unit_type TEXT NOT NULL,
  miner_id TEXT NOT NULL,
  completed_us BIGINT NOT NULL,
  receipt_id TEXT NOT NULL,
  PRIMARY KEY (job_id, attempt)
);
"""
    + PG_APPEND_ONLY_FUNCTION
    + _pg_append_only("job_events"),
    # 2: receipts, the Merkle log, checkpoints, signing keys, the usage ledger
    """
CREATE TABLE receipts (
  receipt_id TEXT PRIMARY KEY,
  job_id TEXT NOT NULL,
  attempt BIGINT NOT NULL,
  envelope BYTEA NOT NULL,
  leaf_index BIGINT NOT NULL UNIQUE,
  issued_us BIGINT NOT NULL,
  UNIQUE (job_id, attempt)
);
CREATE TABLE log_leaves (
  leaf_index BIGINT PRIMARY KEY,
  leaf_hash BYTEA NOT NULL
);
CREATE TABLE checkpoints (
  tree_size BIGINT PRIMARY KEY,
  root_hash BYTEA NOT NULL,
  note TEXT NOT NULL,
  signed_us BIGINT NOT NULL
);
CREATE TABLE signing_keys (
  key_id TEXT PRIMARY KEY,
  role TEXT NOT NULL,
  status TEXT NOT NULL,
  public_key BYTEA NOT NULL,
  private_seed BYTEA,
  valid_from_us BIGINT NOT NULL,
  valid_until_us BIGINT,
  owner TEXT NOT NULL DEFAULT ''
);
CREATE TABLE ledger_entries (
  entry_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  account_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  receipt_id TEXT NOT NULL,
  amount_nano BIGINT NOT NULL,
  units_nano BIGINT NOT NULL,
  booked_us BIGINT NOT NULL,
  UNIQUE (receipt_id, kind)
);
CREATE INDEX ledger_account ON ledger_entries(account_id, kind);
"""
    + "".join(_pg_append_only(t) for t in _APPEND_ONLY_AT_2[1:]),
    # 3: the store's holder epoch (fencing): every process that takes the store bumps it before writing
    """
CREATE TABLE store_holder (
  id BIGINT PRIMARY KEY CHECK (id = 1),
  epoch BIGINT NOT NULL,
  holder TEXT NOT NULL,
  taken_us BIGINT NOT NULL
);
INSERT INTO store_holder VALUES (1, 0, '', 0);
""",
    # 4: operators' drains of miners, kept across restarts
    """
CREATE TABLE operator_drains (
  miner_id TEXT PRIMARY KEY,
  reason TEXT NOT NULL,
  created_us BIGINT NOT NULL
);
""",
    # 5: the receipt log's complete tiles
    """
CREATE TABLE log_tiles (
  tile_index BIGINT PRIMARY KEY,
  tile_hash BYTEA NOT NULL
);
"""
    + _pg_append_only("log_tiles"),
    # 6: each account's balance, kept with its ledger entries
    """
CREATE TABLE account_balances (
  account_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  amount_whole BIGINT NOT NULL,
  amount_rest BIGINT NOT NULL,
  receipts BIGINT NOT NULL,
  units_whole BIGINT NOT NULL,
  units_rest BIGINT NOT NULL,
  updated_us BIGINT NOT NULL,
  PRIMARY KEY (account_id, kind)
);
INSERT INTO account_balances
  SELECT account_id, kind, sum(amount_nano / 1000000000), sum(amount_nano % 1000000000), count(*),
         sum(units_nano / 1000000000), sum(units_nano % 1000000000), max(booked_us)
  FROM ledger_entries GROUP BY account_id, kind;
""",
    # 7: how many jobs are in each state, kept with the jobs
    """
CREATE TABLE job_state_counts (
  state BIGINT PRIMARY KEY,
  jobs BIGINT NOT NULL
);
INSERT INTO job_state_counts SELECT state, count(*) FROM jobs GROUP BY state;
""",
    # 8: jobs_client and jobs_miner become (client_id|miner_id, state, job_id), replaced, not added beside; and
    # jobs_state becomes (state, job_id): a btree on (state) alone keeps a state's jobs in heap order, not job_id's
    # (a page of a state sorted them all). About 6 s per million jobs at the first start.
    """
DROP INDEX jobs_client;
DROP INDEX jobs_miner;
DROP INDEX jobs_state;
CREATE INDEX jobs_client_state ON jobs(client_id, state, job_id);
CREATE INDEX jobs_miner_state ON jobs(miner_id, state, job_id);
CREATE INDEX jobs_state ON jobs(state, job_id);
""",
]

assert len(POSTGRES_MIGRATIONS) == len(MIGRATIONS), "every migration needs its PostgreSQL twin"

# The holder epoch, bumped by each process that takes the store, in a transaction of its own right after taking
# it (and migrating): a PostgreSQL writer that takes the store back after losing its connection finds another
# epoch than its own if another process held the store meanwhile (postgres.py, _writer_connection).
BUMP_EPOCH = (
    "UPDATE store_holder SET epoch = epoch + 1, holder = ?, taken_us = ? WHERE id = 1 RETURNING epoch"
)


def holder_name() -> str:
    """Who bumped the epoch, for the operator who reads store_holder (or the error of a fenced writer)."""
    return f"{socket.gethostname()} pid {os.getpid()}"

"""Signing keys: from settings, or generated once and kept in the store; rotation retires, never deletes."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aitbc.receipts import Signer, jwk_thumbprint, verifier_key_string

from ..config import SettingsError
from ..domain.clock import now_us
from ..store.base import KeyRow, Store, UnitOfWork

log = logging.getLogger("coordinator.keys")


@dataclass
class ActiveKeys:
    coordinator: Signer
    attestation: Signer | None
    log: Signer
    rows: list[KeyRow]


async def rotation_time_us(store: Store, rows: Iterable[KeyRow]) -> int:
    """When a retired key's window ends and its successor's begins: now, unless the wall clock stepped back
    below the latest time a key began or a receipt was issued at (ledger entries are booked at it): then that
    time, so that no published window ends before it starts or before a receipt its key signed."""
    issued = max((a["updated_us"] for a in await store.load_accounts()), default=0)
    return max(now_us(), issued, *(r.valid_from_us for r in rows))


async def load_keys(store: Store, signing_hex: str, attestation_hex: str, origin: str) -> ActiveKeys:
    """The active signers, creating or rotating rows so the store publishes every key ever used."""
    rows = {r.key_id: r for r in await store.load_keys()}
    unit = UnitOfWork()
    now = now_us()
    if rows and any(h and Signer(h).key_id not in rows for h in (signing_hex, attestation_hex)):
        now = await rotation_time_us(store, rows.values())  # a newly configured key may retire one

    def active(role: str, wanted: Signer | None, generate: bool) -> Signer | None:
        current = [r for r in rows.values() if r.role == role and r.status == "active"]
        if wanted is not None and any(r.key_id == wanted.key_id for r in current):
            return wanted
        if wanted is not None and wanted.key_id in rows:  # known, and retired (`keys rotate`)
            # Made active again, its published validity would restart now, and what it signed before would
            # no longer verify offline: the operator decides (the settings still name the retired key).
            raise SettingsError(
                f"the configured {role} key {wanted.key_id} was retired (keys rotate); remove it from the "
                "settings to sign with the key that replaced it, or configure a new key"
            )
        if wanted is None and current:
            row = current[-1]
            if row.private_seed is None:
                raise RuntimeError(
                    f"the active {role} key {row.key_id} has no private key here; set it in settings"
                )
            return Signer(row.private_seed)
        if wanted is None and not generate:
            return None
        for row in current:  # rotation: the previous key stays published as retired
            row.status, row.valid_until_us = "retired", now
            unit.keys.append(row)
        signer = wanted or Signer.generate()
        if wanted is None:
            log.warning("no %s key configured: generated %s and kept it in the store", role, signer.key_id)
        row = KeyRow(
            signer.key_id, role, "active", signer.public_key, None if wanted else signer.seed, now, None
        )
        rows[row.key_id] = row
        unit.keys.append(row)
        return signer

    coordinator = active("coordinator", Signer(signing_hex) if signing_hex else None, True)
    attestation = active("attestation", Signer(attestation_hex) if attestation_hex else None, False)
    log_key = active("log", None, True)
    assert coordinator is not None and log_key is not None
    if unit:
        await store.commit(unit)
    log.info("receipt keys: coordinator=%s attestation=%s log=%s (%s)", coordinator.key_id,
             attestation.key_id if attestation else "none", log_key.key_id,
             verifier_key_string(origin, log_key.public_key))  # fmt: skip
    return ActiveKeys(coordinator, attestation, log_key, sorted(rows.values(), key=lambda r: r.valid_from_us))


async def rotate(store: Store, role: str) -> KeyRow:
    """Retire the active key of role and make a new one (aitbc-coordinator keys rotate)."""
    rows = await store.load_keys()
    now = await rotation_time_us(store, rows)
    unit = UnitOfWork()
    for row in rows:
        if row.role == role and row.status == "active":
            row.status, row.valid_until_us = "retired", now
            unit.keys.append(row)
    signer = Signer.generate()
    row = KeyRow(signer.key_id, role, "active", signer.public_key, signer.seed, now, None)
    unit.keys.append(row)
    await store.commit(unit)
    return row


def miner_key_row(miner_id: str, public_key: bytes) -> KeyRow:
    return KeyRow(jwk_thumbprint(public_key), "miner", "active", public_key, None, now_us(), None, miner_id)

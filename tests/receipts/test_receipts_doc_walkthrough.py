"""docs/receipts.md walked as a verifier walks it: receipts issued by `python -m coordinator serve` for jobs an
`aitbc miner run` (with its own receipt key) ran, fetched with the doc's commands, checked field by field
against its sections (payload, envelope, keys, log, bundle), verified with `aitbc receipts verify` with no
coordinator running (and by the Node verifier), tampered copies refused, a newer checkpoint checked to extend
an older one with the proof fetched as the doc says, and the pinned key set across key rotations.

The commands are the doc's (section 7), run as written; only JOB_ID, KEY, N and the address are substituted.
The formulas the doc gives (PAE, key ids, note key ids, the legacy canonical form) are also checked against
the published vectors of ../shared/vectors/."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

from aitbc.receipts import KeySet, jwk_thumbprint
from nacl.signing import SigningKey, VerifyKey

from tests.polyglot.test_grpcurl_readme import GRPCURL
from tests.security.doc_walk_support import (
    ROOT,
    blocks,
    eventually,
    free_port,
    ok,
    section,
    serving,
    sh,
    table_rows,
    user_env,
)

DOC = (ROOT / "docs" / "receipts.md").read_text()
VECTORS = ROOT.parent / "shared" / "vectors"
CLIENT_KEY, MINER_KEY, ADMIN_KEY = "walk-client-key-7a1c", "walk-miner-key-2b9d", "walk-admin-key-4e6f"
MINER = "gpu-box-7"
MINER_SEED = "5a" * 32
NODE = shutil.which("node")
NODE_VERDICTS = Path(__file__).with_name("node_verdicts.js")
CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


# ---------------------------------------------------------------------- what the doc says
def payload_fields() -> dict[str, str]:
    """Section 1's table: field -> type (`started_at`, `completed_at`, `issued_at` share a row)."""
    out = {}
    for cells in table_rows(section(DOC, "1. The receipt payload")):
        for name in re.findall(r"`(\w+)`", cells[0]):
            out[name] = cells[1]
    return out


def walk_commands() -> list[str]:
    (block,) = [b for b in blocks(DOC, "sh") if "aitbc receipts verify" in b]
    return block.strip().splitlines()


def operators_grpcurl() -> str:
    """Section 7's one grpcurl line, for operators without the SDK."""
    (block,) = [
        b for b in blocks(DOC, "sh") if "aitbc receipts verify" not in b and "GetConsistencyProof" in b
    ]
    (line,) = block.strip().splitlines()
    return line


def pae(payload_type: bytes, payload: bytes) -> bytes:
    """Section 2's PAE, written from the doc."""
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)


def note_key_id(name: str, public_key: bytes) -> bytes:
    """Section 6's key id of a signed-note key."""
    return hashlib.sha256(name.encode() + b"\x0a\x01" + public_key).digest()[:4]


def kid(public_key: bytes) -> str:
    """Section 4's KID, written from the doc."""
    x = base64.urlsafe_b64encode(public_key).rstrip(b"=").decode()
    jwk = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return base64.urlsafe_b64encode(hashlib.sha256(jwk.encode()).digest()).rstrip(b"=").decode()


# ---------------------------------------------------------------------- the doc against the vectors
def test_the_docs_formulas_reproduce_the_published_vectors() -> None:
    dsse = json.loads((VECTORS / "dsse_pae.json").read_text())
    assert pae(dsse["payload_type"].encode(), dsse["payload_utf8"].encode()) == dsse["pae_utf8"].encode()
    assert 'PAE(type, payload) = "DSSEv1" SP len(type) SP type SP len(payload) SP payload' in DOC

    note = json.loads((VECTORS / "c2sp_signed_note_example.json").read_text())
    name, key_id_hex, key_b64 = note["verifier_key"].split(
        "+"
    )  # `<name>+<hex(key id)>+<base64(0x01 || key)>`
    raw = base64.b64decode(key_b64)
    assert raw[0] == 1 and note_key_id(name, raw[1:]).hex() == key_id_hex
    (line,) = re.findall(r"^— (\S+) (\S+)$", note["note"], flags=re.M)  # `— <key name> <base64(kid || sig)>`
    assert line[0] == name and base64.b64decode(line[1])[:4].hex() == key_id_hex
    assert note["note"].startswith(note["signed_text"] + "\n")  # the text, a blank line, the signatures

    roots = json.loads((VECTORS / "rfc6962_merkle_roots.json").read_text())
    assert roots["empty_tree_root_hex"] == hashlib.sha256(b"").hexdigest()  # "the empty tree's root"

    legacy = json.loads((VECTORS / "aitbc_v1_receipt_sample.json").read_text())
    public = bytes.fromhex(legacy["verify_key_hex"])  # section 8: key_id is base64url of the raw key
    assert legacy["signature"]["key_id"] == base64.urlsafe_b64encode(public).rstrip(b"=").decode()
    assert json.dumps(legacy["payload"], sort_keys=True, separators=(",", ":")) == legacy["canonical"]
    assert legacy["signature"]["alg"] == "Ed25519"


# ---------------------------------------------------------------------- against a coordinator
def env_file(tmp_path: Path, port: int, db: Path) -> Path:
    path = tmp_path / "settings.env"
    path.write_text(
        f"APP_PORT={port}\nDATABASE_URL=sqlite:///{db}\nCLIENT_API_KEYS=alice:{CLIENT_KEY}\n"
        f"MINER_API_KEYS={MINER}:{MINER_KEY}\nADMIN_API_KEYS=ops:{ADMIN_KEY}\nLOG_FORMAT=json\n"
        "SHUTDOWN_GRACE_SECONDS=1\nSQLITE_SYNCHRONOUS=NORMAL\n"
    )  # fmt: skip
    return path


async def run_job(env: dict[str, str], payload: str, cwd: Path) -> str:
    return json.loads(await ok(f"aitbc submit '{payload}' --wait", env, cwd))["job"]["job_id"]


def doc_line(n: int | str, **values: str) -> str:
    """Line n of the doc's block (or the line given), its placeholders replaced (JOB_ID, KEY, N, the address)."""
    line = walk_commands()[n] if isinstance(n, int) else n
    line = re.sub(r"\s+#.*$", "", line)  # (the comment saying what it prints)
    for placeholder, value in values.items():
        line = re.sub(rf"\b{placeholder}\b", value, line)
    return line.replace("localhost:50051", values.get("ADDRESS", "localhost:50051"))


async def verify(line: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    code, out, _ = await sh(line, env, cwd)
    assert out.count("\n") == 1, out  # one line on stdout
    return code, out.strip()


def tampered(bundle: dict, change: str) -> dict:
    copy = json.loads(json.dumps(bundle))
    if change == "payload":  # one byte of the signed payload, the envelope otherwise as served
        envelope = json.loads(base64.b64decode(copy["envelope"]))
        payload = base64.b64decode(envelope["payload"]).replace(
            b'"chain_id":"aitbc-local"', b'"chain_id":"aitbc-locaL"'
        )
        envelope["payload"] = base64.b64encode(payload).decode()
        copy["envelope"] = base64.b64encode(json.dumps(envelope, separators=(",", ":")).encode()).decode()
    elif change == "leaf_index":
        copy["leaf_index"] += 1
    return copy


def node_verdict(bundle: bytes, keys: bytes, roles: list[str], older: str | None = None,
                 proof: list[str] | None = None) -> dict:  # fmt: skip
    case: dict = {"name": "walk", "kind": "bundle", "data": base64.b64encode(bundle).decode(), "roles": roles}
    if older is not None:
        case |= {"older": older, "proof": proof or []}
    request = {"keyset": keys.decode(), "cases": [case]}
    done = subprocess.run([NODE, str(NODE_VERDICTS)], input=json.dumps(request).encode(), capture_output=True,
                          timeout=60, check=True)  # type: ignore[list-item]  # fmt: skip
    (verdict,) = json.loads(done.stdout)
    return verdict


async def test_the_receipts_doc_walked_against_a_real_coordinator(tmp_path: Path) -> None:
    port, db = free_port(), tmp_path / "coordinator.db"
    address = f"127.0.0.1:{port}"
    settings = env_file(tmp_path, port, db)
    work = tmp_path / "work"
    work.mkdir()
    env = user_env(tmp_path, AITBC_ADDRESS=address, AITBC_API_KEY=CLIENT_KEY)
    miner_cmd = (f"exec aitbc miner run --address {address} --api-key {MINER_KEY} --runner echo "
                 f"--signing-key-hex {MINER_SEED}")  # fmt: skip
    assert GRPCURL, "grpcurl is installed by the dev extra"

    async with serving(settings) as coordinator:
        miner = await start(miner_cmd, env)
        try:
            await eventually(lambda: coordinator.logged("miner connected"), what="the miner")
            first = await run_job(env, '{"prompt": "a lighthouse at dawn"}', work)
            await ok(
                doc_line(0, JOB_ID=first), env, work
            )  # aitbc receipts get ... && aitbc receipts keys ...
            (work / "older-receipt.json").write_bytes((work / "receipt.json").read_bytes())
            assert doc_line(3).startswith("aitbc receipts checkpoint ")
            assert await ok(doc_line(3), env, work) == ""  # the checkpoint kept, in checkpoint.json
            for n in (2, 3):
                await run_job(env, f'{{"n": {n}}}', work)
            last = await run_job(env, '{"n": 4}', work)
            await ok(doc_line(0, JOB_ID=last), env, work)
            kept = json.loads((work / "checkpoint.json").read_text())["checkpoint"]
            older_size = int(kept["tree_size"])
            assert (
                older_size
                == json.loads((work / "older-receipt.json").read_text())["inclusion_proof"]["tree_size"]
            )
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", kept["signed_at"]), kept
            assert doc_line(4).startswith("aitbc receipts consistency ")
            await ok(doc_line(4, N=str(older_size)), env, work)  # the proof, in proof.json
            # the operators' grpcurl line, as written (in a directory of its own: it writes proof.json too)
            grpcurl = doc_line(operators_grpcurl(), KEY=CLIENT_KEY, N=str(older_size), ADDRESS=address)
            assert grpcurl.startswith("grpcurl ")
            (work / "ops").mkdir()
            await ok(grpcurl.replace("grpcurl ", f"{GRPCURL} ", 1), env, work / "ops")
        finally:
            miner.terminate()
            await miner.wait()

    # Offline from here on: the coordinator is stopped
    assert coordinator.proc.returncode == 0
    bundle = json.loads((work / "receipt.json").read_text())
    keys_json = (work / "keys.json").read_bytes()
    check_the_bundle_as_specified(bundle, KeySet.load(keys_json), last)

    code, line = await verify(doc_line(1), env, work)
    assert code == 0 and re.fullmatch(r"OK \S+ job=(\S+) format=dsse roles=coordinator,miner leaf=3 tree_size=4 "
                                      r"origin=aitbc\.coordinator/coord-local", line), line  # fmt: skip
    assert f"job={last}" in line
    code, line = await verify(doc_line(2), env, work)  # --require miner
    assert code == 0 and "roles=coordinator,miner" in line, line
    code, line = await verify(doc_line(1) + " --require attestation", env, work)  # none configured here
    assert (code, line) == (1, "FAIL: missing attestation signature")
    # the newer checkpoint extends the kept one, with the proof `aitbc receipts consistency` wrote
    code, line = await verify(doc_line(5), env, work)
    assert code == 0 and line.endswith(f" extends={older_size}"), line
    # ... and the one grpcurl printed, with an earlier bundle as the older checkpoint
    with_grpcurl = (
        doc_line(5).replace("proof.json", "ops/proof.json").replace("checkpoint.json", "older-receipt.json")
    )
    code, line = await verify(with_grpcurl, env, work)
    assert code == 0 and line.endswith(f" extends={older_size}"), line
    # ... and not one whose proof is cut short
    proof = json.loads((work / "proof.json").read_text())
    proof["proof"]["hashes"] = proof["proof"]["hashes"][:-1]
    (work / "proof.json").write_text(json.dumps(proof))
    assert await verify(doc_line(5), env, work) == (1, "FAIL: consistency proof does not match checkpoints")

    # tampered copies: one line, FAIL, exit 1; a file that is not a receipt: exit 2
    for change, reason in (("payload", "FAIL: bad signature"), ("leaf_index", "FAIL: inclusion proof does not match "
                                                                              "checkpoint")):  # fmt: skip
        (work / "receipt.json").write_text(json.dumps(tampered(bundle, change)))
        assert await verify(doc_line(1), env, work) == (1, reason), change
    (work / "receipt.json").write_text("not a receipt")
    assert (await verify(doc_line(1), env, work))[0] == 2
    (work / "receipt.json").write_text(json.dumps(bundle))

    if NODE is not None:  # the Node SDK's verifier, on the same bytes
        raw = (work / "receipt.json").read_bytes()
        assert node_verdict(raw, keys_json, ["coordinator", "miner"]) == {"name": "walk", "ok": True}
        assert not node_verdict(json.dumps(tampered(bundle, "payload")).encode(), keys_json, ["coordinator"])[
            "ok"
        ]

    await walk_key_rotations(tmp_path, settings, db, env, work, miner_cmd)


async def start(command: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec("bash", "-c", command, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)  # fmt: skip


def check_the_bundle_as_specified(bundle: dict, keys: KeySet, job_id: str) -> None:
    """Sections 1 to 7, field by field, on what the coordinator served."""
    # 7. the bundle: exactly its fields
    assert set(bundle) == {"envelope", "leaf_index", "inclusion_proof", "checkpoint"}
    assert set(bundle["inclusion_proof"]) == {"tree_size", "hashes"}
    envelope = base64.b64decode(bundle["envelope"], validate=True)
    # 2. the envelope: compact, in the doc's key order, the payload standard base64 with padding
    doc_envelope = re.search(r'^\{"payload":.*\}$', section(DOC, "2. The envelope (DSSE v1)"), flags=re.M)
    assert doc_envelope is not None
    env = json.loads(envelope)
    assert envelope == json.dumps(env, separators=(",", ":")).encode()
    assert list(env) == ["payload", "payloadType", "signatures"]
    assert (
        env["payloadType"] == "application/vnd.aitbc.receipt.v1+json"
        and env["payloadType"] in doc_envelope[0]
    )
    payload = base64.b64decode(env["payload"], validate=True)
    assert base64.b64encode(payload).decode() == env["payload"]
    for signature in env["signatures"]:
        assert list(signature) == ["keyid", "sig"]
        (entry,) = keys.by_key_id(signature["keyid"])
        VerifyKey(entry.public_key).verify(
            pae(env["payloadType"].encode(), payload), base64.b64decode(signature["sig"])
        )
    # 1. the payload: canonical JSON, the table's fields and types
    fields = json.loads(payload)
    assert payload == json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    table = payload_fields()
    assert set(fields) == set(table), set(fields) ^ set(table)  # (a miner that signs: the optional two too)
    for name, value in fields.items():
        kind = table[name]
        expected = {"string": str, "integer": int, "decimal string": str, "object": dict}[kind]
        assert isinstance(value, expected), (name, value, kind)
        if kind == "decimal string":
            assert re.fullmatch(r"\d+(\.\d+)?", value), (name, value)
    assert fields["version"] == "1.0" and fields["job_id"] == job_id and fields["provider"] == MINER
    assert fields["client"] == "alice" and fields["coordinator_id"] == "coord-local"
    for name in ("started_at", "completed_at", "issued_at"):
        assert CANONICAL_TIME.fullmatch(fields[name]), fields[name]
    assert fields["artifact_hash"] == f"sha256:{fields['result_sha256']}"
    assert re.fullmatch(r"[0-9a-f]{32}", fields["nonce"])
    # 3. the miner report: canonical, its fields equal to the receipt's, signed over PAE by the miner's key
    report = base64.b64decode(fields["miner_report"])
    assert list(json.loads(report)) == ["attempt", "job_id", "result_sha256", "unit_type", "units"]
    assert all(fields[k] == v for k, v in json.loads(report).items())
    (miner_key,) = keys.by_key_id(fields["miner_signature"]["keyid"])
    assert (miner_key.role, miner_key.owner) == ("miner", MINER)
    assert miner_key.public_key == bytes(SigningKey(bytes.fromhex(MINER_SEED)).verify_key)
    VerifyKey(miner_key.public_key).verify(pae(b"application/vnd.aitbc.miner-report.v1+json", report),
                                           base64.b64decode(fields["miner_signature"]["sig"]))  # fmt: skip
    # 4. keys: KID = the thumbprint, as the doc computes it
    for entry in keys:
        assert entry.key_id == kid(entry.public_key) == jwk_thumbprint(entry.public_key)
    # 6. the checkpoint: the note text, a blank line, one signature line by the log key named as the origin
    origin, size, root, blank, signature_line, end = bundle["checkpoint"].split("\n")
    assert (origin, int(size), blank, end) == ("aitbc.coordinator/coord-local", 4, "", "")
    assert len(base64.b64decode(root)) == 32
    name, signed = re.fullmatch(r"— (\S+) (\S+)", signature_line).groups()  # type: ignore[union-attr]
    (log_key,) = [k for k in keys.with_role("log") if k.status == "active"]
    assert name == origin and base64.b64decode(signed)[:4] == note_key_id(name, log_key.public_key)
    vkey = base64.b64encode(b"\x01" + log_key.public_key).decode()
    assert log_key.note_verifier_key == f"{name}+{note_key_id(name, log_key.public_key).hex()}+{vkey}"


async def walk_key_rotations(tmp_path: Path, settings: Path, db: Path, env: dict[str, str], work: Path,
                             miner_cmd: str) -> None:  # fmt: skip
    """Key rotation (section 7): what a key set pinned before each rotation says of later receipts."""
    (work / "old-receipt.json").write_bytes((work / "receipt.json").read_bytes())
    for role, reason in (("log", "FAIL: checkpoint not signed by a known log key"),
                         ("coordinator", "FAIL: missing coordinator signature")):  # fmt: skip
        out = await ok(f"aitbc-coordinator keys rotate --database sqlite:///{db} --role {role}", env, work)
        assert out.startswith(f"new active {role} key "), out
        async with serving(settings) as coordinator:
            miner = await start(miner_cmd, env)
            try:
                await eventually(lambda c=coordinator: c.logged("miner connected"), what="the miner")  # type: ignore[misc]
                job = await run_job(env, f'{{"rotated": "{role}"}}', work)
                await ok(f"aitbc receipts get {job} --out new-receipt.json && aitbc receipts keys --out new-keys.json",
                         env, work)  # fmt: skip
            finally:
                miner.terminate()
                await miner.wait()
        assert await verify("aitbc receipts verify new-receipt.json --keys keys.json", env, work) == (
            1,
            reason,
        )
        code, line = await verify("aitbc receipts verify new-receipt.json --keys new-keys.json", env, work)
        assert code == 0, line
        code, line = await verify("aitbc receipts verify old-receipt.json --keys new-keys.json", env, work)
        assert code == 0, line  # what the retired key signed still verifies
        retired = [
            k
            for k in KeySet.load((work / "new-keys.json").read_bytes())
            if k.role == role and k.status == "retired"
        ]
        assert retired and all(k.valid_until is not None for k in retired)

"""`aitbc-coordinator`: serve, demo, and key management."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
from urllib.parse import unquote, urlsplit

from .config import SettingsError, load_settings, validate
from .logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aitbc-coordinator", description="AITBC job coordinator over gRPC")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the coordinator until SIGTERM/SIGINT")
    serve.add_argument("--host", help="listen address (APP_HOST)")
    serve.add_argument("--port", type=int, help="listen port (APP_PORT)")
    serve.add_argument("--database", help="DATABASE_URL, e.g. sqlite:///coordinator.db")
    serve.add_argument("--env-file", help="settings file (default: .env, if there is one)")
    commands.add_parser(
        "demo", help="a coordinator, a local miner and a few jobs, end to end; exits 0 on success"
    )
    keys = commands.add_parser("keys", help="API keys and receipt signing keys")
    key_commands = keys.add_subparsers(dest="key_command", required=True)
    create = key_commands.add_parser("create", help="print a new API key once, and the settings line to add")
    create.add_argument("--role", required=True, choices=("client", "miner", "admin"))
    create.add_argument("--name", required=True)
    generate = key_commands.add_parser("generate", help="print a new Ed25519 receipt signing key (hex seed)")
    generate.add_argument("--role", default="signing", choices=("signing", "attestation"))
    rotate = key_commands.add_parser(
        "rotate", help="retire the active receipt key in the store; make a new one"
    )
    rotate.add_argument("--database", required=True)
    rotate.add_argument("--role", default="coordinator", choices=("coordinator", "log"))
    args = parser.parse_args(argv)

    if args.command == "keys":
        return keys_command(args)
    given = getattr(args, "env_file", None)
    env_file = given or ".env"
    try:
        if given == "":  # (it skipped ./.env: read now, it would be a settings file nobody named)
            raise SettingsError("--env-file: an empty name (leave the flag out for ./.env)")
        # (a typo ran on the default settings, with no API keys; /dev/null: no settings file at all)
        if given and (not os.path.exists(given) or os.path.isdir(given)):
            raise SettingsError(f"--env-file: no such file: {given}")
        settings = load_settings(env_file=env_file)
    except SettingsError as exc:
        print(f"aitbc-coordinator: bad setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "demo":
        from .demo import run_demo

        try:
            return asyncio.run(run_demo())
        except KeyboardInterrupt:  # Ctrl-C: the demo's coordinator was stopped, its temporary store removed
            print("aitbc-coordinator: demo interrupted", file=sys.stderr)
            return 130  # (the shell's code for a process ended by SIGINT)
    overrides = {
        k: v
        for k, v in (("app_host", args.host), ("app_port", args.port), ("database_url", args.database))
        if v is not None
    }
    try:
        settings = settings.replace(**overrides)
        validate(settings)  # (--port, --database as their settings are: out of range, an unknown scheme)
    except SettingsError as exc:
        print(f"aitbc-coordinator: bad setting: {exc}", file=sys.stderr)
        return 2
    from .server import serve as run_server
    from .store.base import StoreFenced, StoreInUse

    try:
        asyncio.run(run_server(settings, env_file=env_file))
    except SettingsError as exc:  # found wrong only against the store (a configured key retired since)
        print(f"aitbc-coordinator: bad setting: {exc}", file=sys.stderr)
        return 2
    except StoreFenced as exc:  # another process held the store while serving: restart, reload from the store
        print(f"aitbc-coordinator: {exc}", file=sys.stderr)
        return 3
    except StoreInUse as exc:  # another coordinator serves from this store
        print(f"aitbc-coordinator: {exc}", file=sys.stderr)
        return 2
    except (
        Exception
    ) as exc:  # (nothing was changed: a supervisor starts it again, and it serves once the store answers)
        return _unreachable_store(exc)
    except KeyboardInterrupt:
        pass
    return 0


def keys_command(args: argparse.Namespace) -> int:
    if args.key_command == "create":
        import hashlib

        key = f"aitbc_{args.role}_{secrets.token_urlsafe(24)}"
        digest = hashlib.sha256(key.encode()).hexdigest()
        env = f"{args.role.upper()}_API_KEYS"
        print(key)
        print(f"# the key above is shown once; the coordinator keeps only its hash. Add to {env} (comma-separated)"
              f" or one per line to {env}_FILE, then restart or send SIGHUP:", file=sys.stderr)  # fmt: skip
        print(f"{args.name}:sha256:{digest}", file=sys.stderr)
        return 0
    if args.key_command == "generate":
        from aitbc.receipts import Signer

        signer = Signer.generate()
        env = "RECEIPT_SIGNING_KEY_HEX" if args.role == "signing" else "RECEIPT_ATTESTATION_KEY_HEX"
        print(f"{env}={signer.seed.hex()}")
        print(f"# key id {signer.key_id}; public key {signer.public_key.hex()}", file=sys.stderr)
        return 0
    from .receipts.keyring import rotate
    from .store import open_store
    from .store.base import StoreInUse, StoreMissing, StoreUnusable

    if not args.database.startswith(("sqlite:///", "postgres://", "postgresql://")):
        print("aitbc-coordinator: --database: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB[?schema=NAME]",
              file=sys.stderr)  # fmt: skip
        return 2
    path = args.database[len("sqlite:///") :]
    if path.startswith("file:"):  # a URI (as the store reads it): the file it names, percent-decoded
        path = unquote(urlsplit(path).path)
    if args.database.startswith("sqlite:///") and not os.path.isfile(path):
        # (opening it would make an empty store: a mistyped path, or the wrong working directory)
        print(f"aitbc-coordinator: no store at {args.database}: give the coordinator's DATABASE_URL",
              file=sys.stderr)  # fmt: skip
        return 2

    async def run() -> None:
        # (waiting for the lock, it could win a running one's blip; PostgreSQL: no schema made, as no file is)
        store = open_store(args.database, wait_for_lock=False, must_exist=True)
        await store.open()
        try:
            row = await rotate(store, args.role)
            print(f"new active {args.role} key {row.key_id}; the previous one is retired but still published")
        finally:
            await store.close()

    try:
        asyncio.run(run())
    except (StoreInUse, StoreMissing) as exc:  # in use: a running coordinator would sign with a retired key
        print(f"aitbc-coordinator: {exc}", file=sys.stderr)
        return 2
    except StoreUnusable as exc:  # (no SQLite database, a directory, a newer schema: as serve says it)
        print(f"aitbc-coordinator: cannot open {args.database}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        return _unreachable_store(exc)
    return 0


def _unreachable_store(exc: Exception) -> int:
    """Exit status 1, with one line, for a store that could not be reached; any other error is raised again."""
    from .store.base import store_unreachable

    if not store_unreachable(exc):
        raise exc
    print(f"aitbc-coordinator: the store could not be reached: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    logging.basicConfig()
    raise SystemExit(main())

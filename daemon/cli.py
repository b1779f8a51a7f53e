"""`turnup` commands; the only place that parses argv.

turnup run --config FILE        serve (DHCP/TFTP/ACS/RADIUS as configured, API, webhooks)
turnup check-config FILE        validate a config file; located errors, exit 2 when bad
turnup db upgrade [--config F | --url URL]   run the store migrations
turnup demo [--devices N]       the whole path on loopback with an emulated fleet
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from daemon.config import ConfigError, Settings, StoreSettings, load_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnup", description="zero-touch service turn-up daemon")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", required=True, help="TOML config file")
    run.add_argument(
        "--ready-file", help="write the bound endpoints as JSON here once every socket is bound"
    )
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    db = sub.add_parser("db", help="store maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply the store migrations")
    src = up.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", "-c", help="TOML config file (uses store.url)")
    src.add_argument("--url", help="database URL")
    demo = sub.add_parser("demo", help="run the end-to-end demo on loopback")
    demo.add_argument("--orders", type=int, default=20, help="orders to create (default 20)")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.add_argument("--timeout", type=float, default=120.0, help="give up after N seconds")
    return p


def _load(path: str) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"turnup: bad config\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _uvloop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency through uvicorn[standard]
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _ready_writer(path: str) -> Callable[[Any], None]:
    def write(endpoints: Any) -> None:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(endpoints)), encoding="utf-8")
        tmp.replace(path)  # atomic: readers never see half a file

    return write


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        settings = _load(args.file)
        plans = ", ".join(p.id for p in settings.plans) or "none"
        print(f"{args.file}: OK (store {settings.store.url.split('://')[0]}, plans: {plans})")
        if not settings.api.token:
            print("warning: api.token is empty; `turnup run` will refuse to start", file=sys.stderr)
        if not settings.webhooks.url:
            print(
                "warning: webhooks.url is empty; billing events stay in the outbox", file=sys.stderr
            )
        return 0
    if args.command == "db":
        from pydantic import ValidationError
        from sqlalchemy.exc import SQLAlchemyError

        from daemon.store.repository import upgrade

        url = args.url or _load(args.config).store.url
        try:
            StoreSettings(url=url)
        except ValidationError as exc:
            print(f"turnup: bad --url: {exc.errors()[0]['msg']}", file=sys.stderr)
            return 2
        try:
            asyncio.run(upgrade(url))
        except (OSError, SQLAlchemyError) as exc:
            print(f"turnup: cannot upgrade the store: {exc}", file=sys.stderr)
            return 1
        print(f"store at {url.split('://')[0]} is at the latest schema")
        return 0
    if args.command == "run":
        settings = _load(args.config)
        if not settings.api.token:
            print("turnup: api.token is empty; set it (or TURNUP_API__TOKEN)", file=sys.stderr)
            return 2
        from daemon.app import App, Notifier, configure_logging

        configure_logging(settings.logging.level, settings.logging.json_output)
        write_ready = _ready_writer(args.ready_file) if args.ready_file else None

        def on_ready(endpoints: Any) -> None:
            # Everything imported and loaded at start-up lives as long as the process:
            # move it out of the collector's way, so a full collection walks only
            # what requests allocate (shorter pauses on the ACS).
            gc.collect()
            gc.freeze()
            if write_ready is not None:
                write_ready(endpoints)

        app = App(settings, notifier=Notifier.from_environment(), on_ready=on_ready)
        with _uvloop_runner() as runner:
            runner.run(app.run())
        return 0
    if args.command == "demo":
        from emulators.scenarios.demo import run_demo

        return run_demo(orders=args.orders, keep=args.keep, timeout=args.timeout)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

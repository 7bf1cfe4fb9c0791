"""Command line: ``rtserver serve | token | migrate | publish | notify | bench``.

Parsing and calling only. Every ``serve`` flag is also settable as
``RTSERVER_<NAME>`` in the environment and as its key in the config file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get("RTSERVER_CONFIG"),
                   help="TOML config file (RTSERVER_CONFIG; default: the shipped rtserver.toml)")


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the server")
    _add_config_flags(p)
    p.add_argument("--host", help="listen address (RTSERVER_HOST, server.host)")
    p.add_argument("--port", type=int, help="listen port, 0 = any free (RTSERVER_PORT)")
    p.add_argument("--workers", help="worker processes, a number or auto (RTSERVER_WORKERS)")
    p.add_argument("--redis", help="Redis URL for a multi-machine bus (RTSERVER_REDIS)")
    p.add_argument("--database", help="PostgreSQL DSN (RTSERVER_DATABASE)")
    p.add_argument("--domains",
                   help="domain plugins, comma-separated; '' = the real-time core alone "
                   "(RTSERVER_DOMAINS, domains.enabled)")
    p.add_argument("--fanout", choices=["compiled", "python"],
                   help="fan-out core (RTSERVER_FANOUT); python = the reference, for tests")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log level (RTSERVER_LOG_LEVEL)")
    p.add_argument("--dev", action="store_const", const=True, default=None,
                   help="development mode: generate a throw-away JWT secret if none is set")


def _token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("token", help="print a signed token for development and tests")
    _add_config_flags(p)
    p.add_argument("--user", required=True, help="user UUID (the sub claim)")
    p.add_argument("--perm", action="append", default=[], help="permission (repeatable)")
    p.add_argument("--room", action="append", default=[], help="room grant glob (repeatable)")
    p.add_argument("--ttl", type=float, required=True, help="seconds until the token expires")


def _db_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
               help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    _add_config_flags(p)
    p.add_argument("--database", help="PostgreSQL DSN (RTSERVER_DATABASE)")
    return p


def _load(args: argparse.Namespace, flags: dict[str, object]) -> object:
    from rtserver.config import ConfigError, load_config

    try:
        return load_config(args.config, flags=flags)
    except ConfigError as exc:
        print(f"rtserver: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _cmd_serve(args: argparse.Namespace) -> int:
    from rtserver.config import Config
    from rtserver.fanout import FanoutUnavailable, load_fanout

    config = _load(args, {
        "host": args.host, "port": args.port, "workers": args.workers, "redis": args.redis,
        "database": args.database, "fanout": args.fanout, "log_level": args.log_level,
        "dev": args.dev, "domains": args.domains,
    })
    assert isinstance(config, Config)
    try:
        load_fanout(config.fanout.implementation)
    except FanoutUnavailable as exc:
        print(f"rtserver: refusing to start: {exc}", file=sys.stderr)
        return 2
    from rtserver.plugin import DomainLoadError, load_domain_classes

    try:
        load_domain_classes(config.domains.enabled)
    except DomainLoadError as exc:
        print(f"rtserver: refusing to start: {exc}", file=sys.stderr)
        return 2
    if config.workers.count > 1 or config.bus.redis_url:
        from rtserver.supervisor import plan_from_config, serve_workers

        settings, plan = plan_from_config(config)
        return serve_workers(config, settings, plan)
    from rtserver.server import run_server

    return run_server(config)



def _cmd_token(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rtserver.auth import mint_token
    from rtserver.config import Config

    config = _load(args, {"dev": True})
    assert isinstance(config, Config)
    if config.auth.jwt_algorithm == "HS256":
        key = config.auth.jwt_secret
        if not key:
            print("rtserver: no JWT secret. Required action: set RTSERVER_JWT_SECRET to the "
                  "server's secret", file=sys.stderr)
            return 2
    else:
        if not config.auth.jwt_private_key_file:
            print("rtserver: RS256 needs auth.jwt_private_key_file to sign tokens",
                  file=sys.stderr)
            return 2
        key = Path(config.auth.jwt_private_key_file).read_text()
    try:
        token = mint_token(key, args.user, args.perm, args.room, args.ttl,
                           config.auth.jwt_algorithm)
    except ValueError as exc:
        print(f"rtserver: invalid --user: {exc}. Required action: give a UUID", file=sys.stderr)
        return 2
    print(token)
    return 0


def _db_config(args: argparse.Namespace) -> tuple[object, str] | int:
    from rtserver.config import Config

    config = _load(args, {"database": args.database, "dev": True})
    assert isinstance(config, Config)
    if not config.database.dsn:
        print("rtserver: no database. Required action: pass --database postgresql://... "
              "(or set RTSERVER_DATABASE)", file=sys.stderr)
        return 2
    return config, config.database.dsn


def _cmd_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from rtserver.config import Config
    from rtserver.store.migrations import apply_migrations, latest_version

    got = _db_config(args)
    if isinstance(got, int):
        return got
    config, dsn = got
    assert isinstance(config, Config)
    applied = asyncio.run(apply_migrations(
        dsn, connect_timeout=config.database.connect_timeout,
        lock_timeout=config.database.migration_lock_timeout))
    if applied:
        print(f"applied migrations {applied}; schema is at version {latest_version()}")
    else:
        print(f"nothing to do; schema is at version {latest_version()}")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    from rtserver.config import Config
    from rtserver.redis_ingress import push_ingress
    from rtserver.store.ingress import IngressInvalid, IngressPayloadTooLarge, send_ingress

    config = _load(args, {"database": args.database, "redis": args.redis, "dev": True})
    assert isinstance(config, Config)
    if not config.database.dsn and not config.bus.redis_url:
        print("rtserver: nowhere to publish. Required action: pass --database postgresql://... "
              "or --redis redis://...", file=sys.stderr)
        return 2
    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError as exc:
        print(f"rtserver: --data is not JSON ({exc}). Required action: pass a JSON value",
              file=sys.stderr)
        return 2
    payload = orjson.dumps({"type": "room_publish", "room": args.room, "data": data})
    try:
        if config.bus.redis_url:
            asyncio.run(push_ingress(config.bus.redis_url, config.bus.ingress_key, payload,
                                     timeout=config.bus.request_timeout))
            where = f"Redis list {config.bus.ingress_key}"
        else:
            asyncio.run(send_ingress(config.database.dsn, config.database.ingress_channel,
                                     payload, connect_timeout=config.database.connect_timeout))
            where = f"channel {config.database.ingress_channel}"
    except (IngressInvalid, IngressPayloadTooLarge, ValueError, OSError) as exc:
        print(f"rtserver: {exc}", file=sys.stderr)
        return 2
    print(f"published to {args.room} on {where}")
    return 0


def _cmd_notify(args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    from rtserver.config import Config
    from rtserver.store.ingress import (
        IngressInvalid,
        IngressPayloadTooLarge,
        send_user_notification,
    )

    got = _db_config(args)
    if isinstance(got, int):
        return got
    config, dsn = got
    assert isinstance(config, Config)
    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError as exc:
        print(f"rtserver: --data is not JSON ({exc}). Required action: pass a JSON object",
              file=sys.stderr)
        return 2
    try:
        nid = asyncio.run(send_user_notification(
            dsn, config.database.ingress_channel, user=args.user, title=args.title,
            body=args.body, data=data, connect_timeout=config.database.connect_timeout))
    except (IngressInvalid, IngressPayloadTooLarge, ValueError, OSError) as exc:
        print(f"rtserver: notification not stored: {exc}", file=sys.stderr)
        return 2
    print(f"notification {nid} stored for {args.user} and announced")
    return 0


def _cmd_bench(argv: list[str]) -> int:
    from bench.cli import main as bench_main

    return bench_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtserver`` command."""
    parser = argparse.ArgumentParser(prog="rtserver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _token_parser(sub)
    _db_parser(sub, "migrate", "apply the PostgreSQL migrations (idempotent)")
    p = _db_parser(sub, "publish", "publish to a room through the backend ingress")
    p.add_argument("--redis", help="push onto the Redis ingress list instead of NOTIFY "
                   "(RTSERVER_REDIS)")
    p.add_argument("--room", required=True, help="room, e.g. quote:<uuid>")
    p.add_argument("--data", required=True, help="JSON value to publish")
    p = _db_parser(sub, "notify", "store a push notification and deliver it to a user")
    p.add_argument("--user", required=True, help="user UUID")
    p.add_argument("--title", required=True)
    p.add_argument("--body", required=True)
    p.add_argument("--data", default="{}", help="JSON object attached to the notification")
    sub.add_parser("bench", help="the load-test harness (rtserver bench --help)",
                   add_help=False)
    arglist = list(sys.argv[1:] if argv is None else argv)
    if arglist[:1] == ["bench"]:
        return _cmd_bench(arglist[1:])
    args = parser.parse_args(arglist)
    match args.command:
        case "serve":
            return _cmd_serve(args)
        case "token":
            return _cmd_token(args)
        case "migrate":
            return _cmd_migrate(args)
        case "publish":
            return _cmd_publish(args)
        case "notify":
            return _cmd_notify(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

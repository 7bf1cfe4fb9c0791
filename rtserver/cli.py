"""The ``rtserver`` command line: argument parsing, help texts, and calling the layers below.

Commands: ``serve``, ``token``, ``admin-url``, ``migrate``, ``publish``, ``notify``,
``config show|init|check``, ``version`` and ``bench`` (the load-test harness).
Every ``serve`` flag is also ``RTSERVER_<NAME>`` in the environment and a key
of the configuration file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

__all__ = ["main", "version_text"]

_RAW = argparse.RawDescriptionHelpFormatter


def _shipped_defaults() -> tuple[str, int, str]:
    """``(host, port, path)`` of the shipped configuration, for the help texts."""
    from rtserver.config import DEFAULT_CONFIG_PATH

    data = tomllib.loads(DEFAULT_CONFIG_PATH.read_text())
    return str(data["server"]["host"]), int(data["server"]["port"]), str(DEFAULT_CONFIG_PATH)


def _config_help() -> str:
    host, port, path = _shipped_defaults()
    return f"""\
configuration (later sources win):
  1. the shipped, commented base: {path}
  2. --config FILE / RTSERVER_CONFIG: a TOML file with only the keys you change
     (`rtserver config init PATH` writes a full commented copy to start from)
  3. RTSERVER_* environment variables
  4. command-line flags
  `rtserver config show` prints every effective value and where it came from.
  Default listening address: {host}:{port} (server.host, server.port).

environment:
  RTSERVER_JWT_SECRET   HS256 signing secret, at least 32 characters (required
                        by serve unless --dev; token signs with it)
  RTSERVER_CONFIG       the configuration file (--config)
  RTSERVER_HOST, RTSERVER_PORT, RTSERVER_WORKERS, RTSERVER_REDIS,
  RTSERVER_DATABASE, RTSERVER_DOMAINS, RTSERVER_FANOUT, RTSERVER_LOG_LEVEL, RTSERVER_DEV,
  RTSERVER_CERTFILE, RTSERVER_KEYFILE
                        the serve flags of the same name
"""


_EXIT_HELP = """\
exit status of serve:
  0 stopped by SIGTERM/SIGINT, every connection drained
  1 drain incomplete (workers killed after shutdown_grace)
  2 configuration refused (file, environment, flags, missing compiled core,
    unreadable or invalid TLS certificate/key);
    with --workers also: workers crash-looped
  3 cannot listen (port in use, address not local, privileged port)
  4 runtime directory not usable (workers.runtime_dir)
  5 PostgreSQL unreachable (database.dsn set)
  6 database schema is not this release's (run `rtserver migrate`)
  7 Redis unreachable (bus.redis_url set)
"""


def version_text() -> str:
    """rtserver's, Python's, websockets' and uvloop's versions and the fan-out core state."""
    import platform
    from importlib.metadata import version

    import rtserver

    try:
        import rtserver._fanout as compiled

        core = f"compiled, loaded from {compiled.__file__}"
    except ImportError as exc:
        core = (f"NOT available ({exc}); serve refuses to start unless --fanout python. "
                "Required action: build it with `pip install .`")
    return (f"rtserver {rtserver.__version__}\n"
            f"Python {platform.python_version()} ({platform.python_implementation()})\n"
            f"websockets {version('websockets')}\n"
            f"uvloop {version('uvloop')}\n"
            f"fan-out core: {core}")


class _VersionAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit(0)


def _add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=os.environ.get("RTSERVER_CONFIG"),
                   help="TOML file overriding any subset of the shipped configuration "
                   "(RTSERVER_CONFIG)")


if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _serve_parser(sub: Sub) -> None:
    p = sub.add_parser(
        "serve", help="run the server", formatter_class=_RAW,
        description="Run the WebSocket server (one process, or a supervisor with --workers).",
        epilog=_config_help() + "\n" + _EXIT_HELP)
    _add_config_flag(p)
    _add_serve_flags(p)


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    host, port, _ = _shipped_defaults()
    p.add_argument("--host", help=f"listen address (RTSERVER_HOST, server.host; default {host})")
    p.add_argument("--port", type=int,
                   help=f"listen port, 0 = any free one (RTSERVER_PORT, server.port; "
                   f"default {port})")
    p.add_argument("--workers", metavar="N|auto",
                   help="worker processes sharing the port, a number or auto = CPU count "
                   "(RTSERVER_WORKERS, workers.count; default 1)")
    p.add_argument("--redis", metavar="URL",
                   help="Redis URL: rooms span machines (RTSERVER_REDIS, bus.redis_url; "
                   "default none = one machine)")
    p.add_argument("--database", metavar="DSN",
                   help="PostgreSQL DSN: enables records, notifications, quotes, dashboards "
                   "(RTSERVER_DATABASE, database.dsn; default none)")
    p.add_argument("--domains", metavar="LIST",
                   help="domain plugins, comma-separated: built-in names or module:Class; "
                   "'' runs the real-time core alone (RTSERVER_DOMAINS, domains.enabled; "
                   "default insurance)")
    p.add_argument("--certfile", metavar="PEM",
                   help="TLS certificate chain: serve wss:// on the port (RTSERVER_CERTFILE, "
                   "server.certfile; default none = plain ws://, e.g. behind a TLS proxy)")
    p.add_argument("--keyfile", metavar="PEM",
                   help="TLS private key of --certfile (RTSERVER_KEYFILE, server.keyfile)")
    p.add_argument("--fanout", choices=["compiled", "python"],
                   help="fan-out core (RTSERVER_FANOUT); python = the slower reference")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log level of the JSON lines on stderr (RTSERVER_LOG_LEVEL)")
    p.add_argument("--dev", action="store_const", const=True, default=None,
                   help="development mode: generate (and log) a throw-away JWT secret when "
                   "RTSERVER_JWT_SECRET is not set (RTSERVER_DEV)")


def _token_parser(sub: Sub) -> None:
    p = sub.add_parser(
        "token", help="print a signed token for development and tests", formatter_class=_RAW,
        description="Print a JWT signed with the server's secret: RTSERVER_JWT_SECRET "
        "(auth.jwt_secret) for HS256, auth.jwt_private_key_file for RS256.",
        epilog="example:\n  RTSERVER_JWT_SECRET=... rtserver token --user "
        "6f1c2a9e-8d4b-4b0e-9a57-3f5d2c1b7e10 --perm publish --room 'bench:*' --ttl 3600\n\n"
        + _config_help())
    _add_config_flag(p)
    p.add_argument("--user", required=True, help="user UUID (the sub claim)")
    p.add_argument("--perm", action="append", default=[], help="permission (repeatable)")
    p.add_argument("--room", action="append", default=[], help="room grant glob (repeatable)")
    p.add_argument("--ttl", type=float, required=True, help="seconds until the token expires")


def _admin_url_parser(sub: Sub) -> None:
    p = sub.add_parser(
        "admin-url", help="print a login link of the admin console (/admin/)",
        formatter_class=_RAW,
        description="Print http://HOST:PORT/admin/#token=JWT: a single-use login token with "
        "admin:monitor (--operate adds admin:operate, --audit audit:read) signed like "
        "`rtserver token`. The token travels in the URL fragment (never sent to the server "
        "in the request line); the page takes it out of the address bar and exchanges it "
        "once for a session token with the same permissions and expiry (the server needs "
        "--database: the use is recorded in PostgreSQL). Opening the link again is refused.",
        epilog="example:\n  RTSERVER_JWT_SECRET=... rtserver admin-url --user "
        "6f1c2a9e-8d4b-4b0e-9a57-3f5d2c1b7e10 --operate --ttl 3600\n\n" + _config_help())
    _add_config_flag(p)
    p.add_argument("--user", required=True, help="the operator's UUID (who the audit log names)")
    p.add_argument("--ttl", type=float, required=True,
                   help="seconds until the link and its session expire (at most "
                   "admin.link_ttl_max)")
    p.add_argument("--operate", action="store_true", help="allow actions (admin:operate)")
    p.add_argument("--audit", action="store_true", help="show the activity stream (audit:read)")
    p.add_argument("--base-url", help="the server as the browser reaches it "
                   "(default: http://server.host:server.port)")


def _db_parser(sub: Sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    _add_config_flag(p)
    p.add_argument("--database", metavar="DSN",
                   help="PostgreSQL DSN (RTSERVER_DATABASE, database.dsn)")
    return p


def _config_parser(sub: Sub) -> None:
    p = sub.add_parser("config", help="show, write or check the configuration",
                       formatter_class=_RAW, description="Inspect the configuration.",
                       epilog=_config_help())
    csub = p.add_subparsers(dest="config_command", required=True, metavar="show|init|check")
    show = csub.add_parser("show", help="print every effective value with its source "
                           "(shipped / file / env / flag), secrets masked; takes the "
                           "serve flags")
    _add_config_flag(show)
    _add_serve_flags(show)
    init = csub.add_parser("init", help="write a full commented copy of the shipped "
                           "configuration to PATH")
    init.add_argument("path", metavar="PATH")
    init.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    check = csub.add_parser("check", help="validate a configuration file (with the "
                            "RTSERVER_* environment) without starting; exit 0 or 2")
    check.add_argument("file", metavar="FILE", nargs="?",
                       default=os.environ.get("RTSERVER_CONFIG"),
                       help="default: RTSERVER_CONFIG, else only the shipped configuration")


def _load_layers(path: str | None, flags: dict[str, object], *,
                 validate: bool = True) -> Any:
    from rtserver.config import ConfigError, load_layers

    try:
        return load_layers(path, flags=flags, validate=validate)
    except ConfigError as exc:
        print(f"rtserver: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _load(args: argparse.Namespace, flags: dict[str, object]) -> Any:
    return _load_layers(args.config, flags).config


def _serve_flags(args: argparse.Namespace) -> dict[str, object]:
    return {
        "host": args.host, "port": args.port, "workers": args.workers, "redis": args.redis,
        "database": args.database, "fanout": args.fanout, "log_level": args.log_level,
        "dev": args.dev, "domains": args.domains, "certfile": args.certfile,
        "keyfile": args.keyfile,
    }


def _cmd_serve(args: argparse.Namespace) -> int:
    from rtserver.config import ConfigError, load_layers
    from rtserver.fanout import FanoutUnavailable, load_fanout
    from rtserver.startup import EXIT_CONFIG, StartupError, report_startup_failure

    flags = _serve_flags(args)
    try:
        try:
            loaded = load_layers(args.config, flags=flags)
        except ConfigError as exc:
            problem, _, action = str(exc).partition(". Required action: ")
            raise StartupError(EXIT_CONFIG, f"configuration error: {problem}",
                               action or "fix the configuration") from exc
        config = loaded.config
        from rtserver.requirements import RequirementError, check_requirements

        try:
            check_requirements()
        except RequirementError as exc:
            problem, _, action = str(exc).partition(" Required action: ")
            raise StartupError(EXIT_CONFIG, problem.rstrip(". "), action) from exc
        try:
            load_fanout(config.fanout.implementation)
        except FanoutUnavailable as exc:
            problem, _, action = str(exc).partition(" Required action: ")
            raise StartupError(EXIT_CONFIG, problem.rstrip(". "), action) from exc
        from rtserver.plugin import DomainLoadError, load_domain_classes

        try:
            load_domain_classes(config.domains.enabled)
        except DomainLoadError as exc:
            problem, _, action = str(exc).partition(" Required action: ")
            raise StartupError(EXIT_CONFIG, problem.rstrip(". "), action) from exc
        from rtserver.tls import server_ssl_context

        # Once here, so a bad certificate is one line before any worker starts.
        server_ssl_context(config.server.certfile, config.server.keyfile)
        from rtserver.preflight import check_services

        check_services(config)
        if config.workers.count > 1 or config.bus.redis_url:
            from rtserver.supervisor import plan_from_config, serve_workers

            settings, plan = plan_from_config(config)
            return serve_workers(config, settings, plan, sources=loaded.overrides())
        from rtserver.server import run_server

        return run_server(config, sources=loaded.overrides())
    except StartupError as exc:
        return report_startup_failure(exc)


def _cmd_token(args: argparse.Namespace) -> int:
    from rtserver.cli_tokens import signed_token

    token = signed_token(_load(args, {"dev": True}), args.user, args.perm, args.room, args.ttl)
    if isinstance(token, int):
        return token
    print(token)
    return 0


def _cmd_admin_url(args: argparse.Namespace) -> int:
    from rtserver.cli_tokens import admin_url

    return admin_url(_load(args, {"dev": True}), args)


def _db_config(args: argparse.Namespace) -> tuple[Any, str] | int:
    config = _load(args, {"database": args.database, "dev": True})
    if not config.database.dsn:
        print("rtserver: no database. Required action: pass --database postgresql://... "
              "(or set RTSERVER_DATABASE)", file=sys.stderr)
        return 2
    return config, config.database.dsn


def _cmd_migrate(args: argparse.Namespace) -> int:
    import asyncio

    import asyncpg

    from rtserver.config import mask_value
    from rtserver.startup import EXIT_DATABASE, EXIT_SCHEMA
    from rtserver.store.migrations import (
        MigrationError,
        SchemaError,
        apply_migrations,
        latest_version,
    )

    got = _db_config(args)
    if isinstance(got, int):
        return got
    config, dsn = got
    shown = mask_value("database.dsn", dsn)

    def progress(version: int, name: str) -> None:
        print(f"applying migration {version} ({name}) to {shown} ...", flush=True)

    try:
        applied = asyncio.run(apply_migrations(
            dsn, connect_timeout=config.database.connect_timeout,
            lock_timeout=config.database.migration_lock_timeout, progress=progress))
    except (SchemaError, MigrationError) as exc:
        print(f"rtserver: migrate failed: {exc}", file=sys.stderr)
        return EXIT_SCHEMA
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"rtserver: migrate failed: PostgreSQL at {shown}: {type(exc).__name__}: {exc}. "
              "Required action: start PostgreSQL or fix --database / RTSERVER_DATABASE",
              file=sys.stderr)
        return EXIT_DATABASE
    if applied:
        print(f"applied migrations {applied}; schema is at version {latest_version()}")
    else:
        print(f"nothing to do; schema is at version {latest_version()}")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    from rtserver.ingress.payloads import (
        CORE_KINDS,
        IngressDecoder,
        IngressInvalid,
        IngressPayloadTooLarge,
    )
    from rtserver.ingress.postgres_notify import send_ingress
    from rtserver.ingress.redis_list import push_ingress

    config = _load(args, {"database": args.database, "redis": args.redis, "dev": True})
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
    import uuid

    # A key makes a payload handled twice (at-least-once ingress) reach clients once.
    payload = orjson.dumps({"type": "room_publish", "room": args.room, "data": data,
                            "key": uuid.uuid4().hex})
    decoder = IngressDecoder(CORE_KINDS)  # room_publish is the core's kind
    try:
        if config.bus.redis_url:
            asyncio.run(push_ingress(config.bus.redis_url, config.bus.ingress_key, payload,
                                     decoder, timeout=config.bus.request_timeout))
            where = f"Redis list {config.bus.ingress_key}"
        else:
            asyncio.run(send_ingress(config.database.dsn, config.database.ingress_channel,
                                     payload, decoder,
                                     connect_timeout=config.database.connect_timeout))
            where = f"channel {config.database.ingress_channel}"
    except (IngressInvalid, IngressPayloadTooLarge, ValueError, OSError) as exc:
        print(f"rtserver: {exc}", file=sys.stderr)
        return 2
    print(f"published to {args.room} on {where}")
    return 0


def _cmd_notify(args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    # The CLI may import a domain: `rtserver notify` is the insurance domain's command.
    from rtserver.domains.insurance.ingress_kinds import send_user_notification
    from rtserver.ingress.payloads import IngressInvalid, IngressPayloadTooLarge

    got = _db_config(args)
    if isinstance(got, int):
        return got
    config, dsn = got
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


def _toml_value(value: Any) -> str:
    import orjson

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return orjson.dumps(str(value)).decode()


def _cmd_config_show(args: argparse.Namespace) -> int:
    from rtserver.config import DEFAULT_CONFIG_PATH, effective_values

    loaded = _load_layers(args.config, _serve_flags(args), validate=False)
    values = effective_values(loaded.config)
    print(f"# effective rtserver configuration; base: {DEFAULT_CONFIG_PATH} (shipped)")
    print(f"# file: {loaded.file or 'none (no --config / RTSERVER_CONFIG)'}")
    print("# each line: key = value  # source (shipped / file PATH / env VAR / flag)")
    for key, value in values.items():
        source = loaded.sources.get(key, "shipped")
        print(f"{key} = {_toml_value(value)}  # {source}")
    _load_layers(args.config, _serve_flags(args))
    return 0


def _cmd_config_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rtserver.config import DEFAULT_CONFIG_PATH

    target = Path(args.path)
    if target.exists() and not args.force:
        print(f"rtserver: {target} exists. Required action: choose another path or pass "
              "--force to overwrite it", file=sys.stderr)
        return 2
    try:
        target.write_text(DEFAULT_CONFIG_PATH.read_text())
    except OSError as exc:
        print(f"rtserver: cannot write {target} ({exc}). Required action: choose a writable "
              "path", file=sys.stderr)
        return 2
    print(f"wrote {target}: every key, commented. Delete what you do not change and start "
          f"with --config {target} (or RTSERVER_CONFIG={target})")
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    loaded = _load_layers(args.file, {})
    changed = loaded.overrides()
    print(f"configuration OK: {loaded.file or 'shipped configuration only'} "
          f"({len(changed)} value(s) not from the shipped file)")
    return 0


def _cmd_bench(argv: list[str]) -> int:
    from rtserver.bench.cli import main as bench_main

    return bench_main(argv)


def build_parser() -> argparse.ArgumentParser:
    """The ``rtserver`` argument parser (every command and its help text)."""
    parser = argparse.ArgumentParser(
        prog="rtserver", formatter_class=_RAW,
        description="rtserver: a real-time WebSocket server (websockets on uvloop, a compiled "
        "fan-out core,\nworkers sharing the port, PostgreSQL and Redis when configured).",
        epilog="quick start:\n  RTSERVER_JWT_SECRET=<32+ random characters> rtserver serve\n"
        "  rtserver <command> --help   the options of one command\n\n" + _config_help())
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="print the versions of rtserver, Python, websockets, uvloop and "
                        "whether the compiled fan-out core is loaded")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    _token_parser(sub)
    _admin_url_parser(sub)
    _db_parser(sub, "migrate", "apply the pending PostgreSQL migrations (idempotent)")
    p = _db_parser(sub, "publish", "publish to a room through the backend ingress")
    p.add_argument("--redis", metavar="URL", help="push onto the Redis ingress list instead "
                   "of NOTIFY (RTSERVER_REDIS)")
    p.add_argument("--room", required=True, help="room, e.g. quote:<uuid>")
    p.add_argument("--data", required=True, help="JSON value to publish")
    p = _db_parser(sub, "notify", "store a push notification and deliver it to a user")
    p.add_argument("--user", required=True, help="user UUID")
    p.add_argument("--title", required=True)
    p.add_argument("--body", required=True)
    p.add_argument("--data", default="{}", help="JSON object attached to the notification")
    _config_parser(sub)
    sub.add_parser("version", help="the same as --version")
    sub.add_parser("bench", help="the load-test harness (rtserver bench --help)",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtserver`` command."""
    arglist = list(sys.argv[1:] if argv is None else argv)
    if arglist[:1] == ["bench"]:
        return _cmd_bench(arglist[1:])
    parser = build_parser()
    args = parser.parse_args(arglist)
    match args.command:
        case "serve":
            return _cmd_serve(args)
        case "token":
            return _cmd_token(args)
        case "admin-url":
            return _cmd_admin_url(args)
        case "migrate":
            return _cmd_migrate(args)
        case "publish":
            return _cmd_publish(args)
        case "notify":
            return _cmd_notify(args)
        case "version":
            print(version_text())
            return 0
        case "config":
            match args.config_command:
                case "show":
                    return _cmd_config_show(args)
                case "init":
                    return _cmd_config_init(args)
                case "check":
                    return _cmd_config_check(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

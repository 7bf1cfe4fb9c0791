"""The one frozen configuration object of rtserver, and how it is layered.

Sources, later ones win: the shipped, commented ``rtserver.toml`` (the base,
every key with its reason), the user's TOML file (``--config``: any subset of
the shipped keys; an unknown key is refused with a did-you-mean naming the
file), ``RTSERVER_*`` environment variables, command-line flags.
:func:`load_layers` also returns where every value came from. The effective
configuration is logged at start (secrets masked by :func:`mask_value`) and
an invalid or contradictory one refuses to start with a message naming the
key and the fix. This module imports nothing from the layers above it.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from rtserver.config_sections import (
    AccessRule,
    AuthConfig,
    BusConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    DomainsConfig,
    FanoutConfig,
    HeartbeatConfig,
    LimitsConfig,
    NamespaceConfig,
    NotificationsConfig,
    Section,
    ServerConfig,
    WorkersConfig,
)
from rtserver.jsonlog import get_logger
from rtserver.log_writer import LoopWriterSettings
from rtserver.redact import mask_url_credentials

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_FLAGS",
    "SHIPPED",
    "AccessRule",
    "AuthConfig",
    "BusConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DomainsConfig",
    "FanoutConfig",
    "HeartbeatConfig",
    "LimitsConfig",
    "LoadedConfig",
    "NamespaceConfig",
    "NotificationsConfig",
    "ServerConfig",
    "WorkersConfig",
    "effective_values",
    "load_config",
    "load_layers",
    "log_writer_settings",
    "mask_value",
    "masked",
    "resolve_workers",
]

DEFAULT_CONFIG_PATH = Path(__file__).with_name("rtserver.toml")

_log = get_logger("rtserver.config")


def resolve_workers(value: str | int) -> int:
    """``"auto"`` -> number of CPUs (logged); a positive int (or digit string) as is.

    Raises :class:`ValueError` (with the required action) for anything else.
    """
    if value == "auto":
        count = os.cpu_count()
        if count is None:
            raise ValueError(
                "workers = auto but the CPU count is unknown. Required action: set a number")
        _log.info("workers_auto", workers=count)
        return count
    number = int(value)
    if number < 1:
        raise ValueError(f"workers = {value!r}. Required action: use a number >= 1 or 'auto'")
    return number


# flag / environment name -> (section, key). `RTSERVER_<NAME>` in the
# environment and `--<name>` on the command line set the same key.
ENV_FLAGS: dict[str, tuple[str, str]] = {
    "host": ("server", "host"),
    "port": ("server", "port"),
    "log_level": ("server", "log_level"),
    "dev": ("server", "dev"),
    "certfile": ("server", "certfile"),
    "keyfile": ("server", "keyfile"),
    "jwt_secret": ("auth", "jwt_secret"),
    "jwt_previous_secret": ("auth", "jwt_previous_secret"),
    "fanout": ("fanout", "implementation"),
    "workers": ("workers", "count"),
    "redis": ("bus", "redis_url"),
    "database": ("database", "dsn"),
    "domains": ("domains", "enabled"),
}

#: Keys whose values are never shown (logs, ``rtserver config show``).
_SECRET_KEYS = frozenset({"auth.jwt_secret", "auth.jwt_previous_secret"})
#: Tables whose entries are named by the user (a file may add entries).
_OPEN_TABLES = frozenset({"namespaces"})
#: Tables a file replaces as a whole (a map of names, not of settings).
_REPLACED_TABLES = frozenset({"domain.editable_fields"})
#: Source of a value that comes from the shipped rtserver.toml.
SHIPPED = "shipped"


def _coerce_env(section: str, key: str, raw: str) -> Any:
    field_type = {
        f.name: f.type for f in msgspec.structs.fields(_SECTION_TYPES[section])
    }[key]
    if field_type is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(
            f"RTSERVER_{key.upper()}={raw!r} is not a boolean. Required action: use true or false"
        )
    if field_type == list[str]:
        # A comma-separated list; "" is the empty list.
        return [item.strip() for item in raw.split(",") if item.strip()]
    if field_type is int:
        if section == "workers" and key == "count" and raw.strip() == "auto":
            return resolve_workers("auto")
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(
                f"{section}.{key}={raw!r} is not an integer. Required action: give a whole number"
            ) from exc
    return raw


_SECTION_TYPES: dict[str, type[Section]] = {
    "server": ServerConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "heartbeat": HeartbeatConfig,
    "fanout": FanoutConfig,
    "workers": WorkersConfig,
    "bus": BusConfig,
    "database": DatabaseConfig,
    "notifications": NotificationsConfig,
    "domains": DomainsConfig,
}


class LoadedConfig(msgspec.Struct, frozen=True):
    """A validated configuration and where each of its values came from."""

    config: Config
    #: Dotted key (``server.port``) -> ``shipped``, ``file PATH``, ``env RTSERVER_X``
    #: or ``flag --x``, for every value.
    sources: dict[str, str]
    #: The user's file layered over the shipped one, None without ``--config``.
    file: Path | None

    def overrides(self) -> dict[str, str]:
        """The keys not taken from the shipped file, with their source."""
        return {k: v for k, v in self.sources.items() if v != SHIPPED}


def _read_toml(path: Path, role: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{role} {path} does not exist. Required action: pass --config (RTSERVER_CONFIG) "
            "with a TOML file holding only the keys you change (`rtserver config init PATH` "
            f"writes a commented copy of every key; the shipped base is {DEFAULT_CONFIG_PATH})"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{role} {path} cannot be read ({type(exc).__name__}: {exc}). Required action: "
            "make it a readable UTF-8 TOML file"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{role} {path} is not valid TOML: {exc}. Required action: fix the syntax there"
        ) from exc


def _leaves(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every setting; replaced tables count as one value."""
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in _REPLACED_TABLES:
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def _unknown_key(key: str, dotted: str, known: Mapping[str, Any], file: Path,
                 shipped: Mapping[str, Any]) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    parent = dotted.rpartition(".")[0]
    if close:
        hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?"
    else:
        elsewhere = [f"{section}.{key}" for section, table in shipped.items()
                     if isinstance(table, dict) and key in table]
        hint = (f"did you mean {elsewhere[0]}?" if elsewhere
                else f"known keys here: {', '.join(sorted(known))}")
    return ConfigError(
        f"unknown key {dotted} in {file} ({hint}). Required action: fix or remove it "
        f"(every key is listed in the shipped {DEFAULT_CONFIG_PATH})")


def _check_keys(template: Mapping[str, Any], table: Mapping[str, Any], prefix: str, file: Path,
                shipped: Mapping[str, Any]) -> None:
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if key not in template:
            raise _unknown_key(key, dotted, template, file, shipped)
        if isinstance(template[key], dict) and isinstance(value, dict):
            _check_keys(template[key], value, dotted + ".", file, shipped)


def _merge(base: dict[str, Any], override: Mapping[str, Any], prefix: str, file: Path,
           shipped: Mapping[str, Any], sources: dict[str, str]) -> None:
    origin = f"file {file}"
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            if prefix.rstrip(".") not in _OPEN_TABLES:
                raise _unknown_key(key, dotted, base, file, shipped)
            if base and isinstance(value, dict):
                _check_keys(next(iter(base.values())), value, dotted + ".", file, shipped)
            base[key] = value
            sources.update((k, origin) for k, _ in _leaves({key: value}, prefix))
        elif isinstance(base[key], dict) and dotted not in _REPLACED_TABLES:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{dotted} in {file} is a {type(value).__name__}, but it is a table in the "
                    f"shipped file. Required action: write it as [{dotted}] with its keys")
            _merge(base[key], value, dotted + ".", file, shipped, sources)
        else:
            base[key] = value
            sources[dotted] = origin


def _flag_name(name: str) -> str:
    return f"flag --{name.replace('_', '-')}"


def load_layers(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    *,
    validate: bool = True,
) -> LoadedConfig:
    """The shipped file, the user's ``path`` over it, ``RTSERVER_*`` variables, flags.

    The user's file may hold any subset of the shipped keys (a key it does not
    know is refused with a did-you-mean); ``[namespaces.NAME]`` tables may be
    added, ``domain.editable_fields`` is replaced as a whole. ``flags`` maps
    flag names (keys of :data:`ENV_FLAGS`) to values; ``None`` values mean "not
    given". ``env`` defaults to the process environment. ``validate=False``
    skips the cross-key checks (types are always checked), for ``config show``
    of a configuration that does not start yet. Raises :class:`ConfigError`.
    """
    raw = _read_toml(DEFAULT_CONFIG_PATH, "shipped config file")
    sources = {key: SHIPPED for key, _ in _leaves(raw)}
    file_path = Path(path) if path is not None else None
    if file_path is not None and file_path.resolve() != DEFAULT_CONFIG_PATH.resolve():
        user = _read_toml(file_path, "config file")
        shipped = copy.deepcopy(raw)
        _merge(raw, user, "", file_path, shipped, sources)

    environ = os.environ if env is None else env
    for name, (section, key) in ENV_FLAGS.items():
        var = f"RTSERVER_{name.upper()}"
        value = environ.get(var)
        if value is not None:
            raw.setdefault(section, {})[key] = _coerce_env(section, key, value)
            sources[f"{section}.{key}"] = f"env {var}"
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in ENV_FLAGS:
            raise ConfigError(f"unknown flag {name!r}")
        section, key = ENV_FLAGS[name]
        if isinstance(value, str) and (
                (section == "workers" and key == "count") or (section, key) == ("domains",
                                                                                  "enabled")):
            value = _coerce_env(section, key, value)
        raw.setdefault(section, {})[key] = value
        sources[f"{section}.{key}"] = _flag_name(name)

    try:
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        where = str(exc).rpartition("at `$.")[2].rstrip("`")
        dotted = where.replace("[", ".").replace("]", "").replace("'", "").replace('"', "")
        origin = sources.get(dotted) or (f"file {file_path}" if file_path else SHIPPED)
        raise ConfigError(
            f"invalid configuration ({origin}): {exc}. Required action: fix that key "
            "(its type and meaning are documented in the shipped rtserver.toml)"
        ) from exc
    if validate:
        _validate(config)
    return LoadedConfig(config=config, sources=sources, file=file_path)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """:func:`load_layers` without the sources: the validated :class:`Config`."""
    return load_layers(path, env, flags).config


def _require(cond: bool, key: str, problem: str, fix: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {problem}. Required action: {fix}")


def _validate(c: Config) -> None:
    s, a, lim, hb = c.server, c.auth, c.limits, c.heartbeat
    _require(0 <= s.port <= 65535, "server.port", f"{s.port} is not a TCP port", "use 0..65535")
    _require(s.ws_path.startswith("/"), "server.ws_path", "must start with /", 'e.g. "/ws"')
    _require(s.max_message_bytes >= 256, "server.max_message_bytes", "below 256 bytes",
             "allow at least 256 bytes")
    for key in ("open_timeout", "close_timeout", "shutdown_grace"):
        _require(getattr(s, key) > 0, f"server.{key}", "must be > 0", "set a positive number")
    _require(s.backlog >= 1, "server.backlog", "must be >= 1",
             "set the listen backlog (the kernel caps it at net.core.somaxconn)")
    from rtserver.admission import OriginPolicy

    try:
        OriginPolicy(s.allowed_origins)
    except ValueError as exc:
        raise ConfigError(f"server.allowed_origins: {exc}. Required action: fix the pattern "
                          "(docs/security.md)") from exc
    for key in ("max_connections", "max_connections_per_address", "max_unauthenticated",
                "connect_rate_burst", "max_concurrent_auth"):
        _require(getattr(s, key) >= 1, f"server.{key}", "must be >= 1", "set a positive number")
    _require(s.connect_rate_per_second > 0, "server.connect_rate_per_second", "must be > 0",
             "set the connection attempts per second a worker accepts")
    _require(s.admission_retry_after > 0, "server.admission_retry_after", "must be > 0",
             "set the Retry-After seconds of a refused handshake")
    _require(bool(s.certfile) == bool(s.keyfile), "server.certfile/server.keyfile",
             "only one of them is set", "set both (TLS) or neither (plain TCP)")
    from rtserver.forwarded import TrustedProxies

    try:
        TrustedProxies(s.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"server.trusted_proxies: {exc}. Required action: list IP addresses "
                          "or CIDR networks such as 10.0.0.0/8") from exc
    _require(s.gc_young_threshold >= 100, "server.gc_young_threshold", "must be >= 100",
             "set the allocations between young-generation collections (CPython: 700)")
    _require(s.max_incoming_queue >= 1, "server.max_incoming_queue", "must be >= 1",
             "set a positive number")
    _require(s.log_buffer_warn_bytes >= 1, "server.log_buffer_warn_bytes", "must be >= 1",
             "set the buffered log bytes that raise a log_buffer_high warning")
    _require(s.log_buffer_warn_interval > 0, "server.log_buffer_warn_interval", "must be > 0",
             "set the seconds between log_buffer_high warnings")
    if a.jwt_algorithm == "HS256":
        _require(bool(a.jwt_secret) or s.dev, "auth.jwt_secret",
                 "no JWT signing secret is configured",
                 "set RTSERVER_JWT_SECRET (or auth.jwt_secret in the config file), or start "
                 "with --dev to generate a throw-away secret")
        for key, value in (("jwt_secret", a.jwt_secret),
                           ("jwt_previous_secret", a.jwt_previous_secret)):
            if value:
                _require(len(value.encode()) >= 32, f"auth.{key}", "shorter than 32 bytes",
                         "use a random secret of at least 32 bytes (UTF-8 encoded)")
    else:
        _require(bool(a.jwt_public_key_file), "auth.jwt_public_key_file",
                 "RS256 needs a public key", "set the path of a PEM public key")
    _require(a.auth_timeout > 0, "auth.auth_timeout", "must be > 0", "set a positive number")
    _require(0 <= a.leeway <= 300, "auth.leeway", "must be in [0, 300] seconds",
             "allow a small clock skew such as 1")
    _require(a.max_token_lifetime > a.leeway, "auth.max_token_lifetime",
             "must be longer than auth.leeway", "set the longest lifetime a token may have")
    _require(lim.max_room_name_length >= 3, "limits.max_room_name_length", "too small",
             "allow at least 3 characters")
    _require(lim.max_subscriptions >= 1, "limits.max_subscriptions", "must be >= 1",
             "set a positive number")
    _require(lim.rate_limit_per_second > 0, "limits.rate_limit_per_second", "must be > 0",
             "set a positive rate")
    _require(lim.rate_limit_burst >= 1, "limits.rate_limit_burst", "must be >= 1",
             "set a positive burst")
    _require(lim.max_errors_per_minute >= 1, "limits.max_errors_per_minute", "must be >= 1",
             "set a positive number")
    _require(lim.max_connections_per_user >= 1, "limits.max_connections_per_user",
             "must be >= 1", "set the connections one user may hold on one worker")
    _require(1 <= lim.max_json_depth <= 256, "limits.max_json_depth", "must be in 1..256",
             "allow the nesting your messages need, such as 32")
    _require(lim.client_error_log_interval > 0, "limits.client_error_log_interval",
             "must be > 0", "set the seconds between summary lines, such as 10")
    _require(lim.presence_member_limit >= 0, "limits.presence_member_limit", "must be >= 0",
             "set 0 or more")
    _require(lim.outbound_buffer_limit >= s.max_message_bytes, "limits.outbound_buffer_limit",
             "smaller than server.max_message_bytes",
             "allow at least one full message in the outbound buffer")
    _require(hb.interval > 0, "heartbeat.interval", "must be > 0", "set a positive number")
    _require(hb.sweep_slices >= 1, "heartbeat.sweep_slices", "must be >= 1",
             "set a positive number of steps")
    _require(hb.idle_timeout > hb.interval, "heartbeat.idle_timeout",
             "must be longer than heartbeat.interval",
             "set idle_timeout to several heartbeat intervals")
    _require(hb.ws_ping_timeout > 0, "heartbeat.ws_ping_timeout", "must be > 0",
             "set the seconds a WebSocket pong may take")
    _require(c.workers.count >= 1, "workers.count", "must be >= 1",
             "give a positive number or auto")
    _require(c.workers.shutdown_grace > s.shutdown_grace, "workers.shutdown_grace",
             "must be longer than server.shutdown_grace (each worker's own drain)",
             "raise workers.shutdown_grace above server.shutdown_grace")
    _require(c.bus.presence_refresh_interval < c.bus.presence_ttl,
             "bus.presence_refresh_interval", "must be shorter than bus.presence_ttl",
             "refresh presence entries before they expire")
    _require(0 <= c.bus.reconnect_jitter < 1, "bus.reconnect_jitter", "must be in [0, 1)",
             "use a fraction such as 0.5")
    _require(c.bus.history_size >= 0 and c.bus.history_ttl > 0 and c.bus.history_max_bytes > 0,
             "bus.history_size/history_ttl/history_max_bytes", "must be >= 0 / > 0 / > 0",
             "set a history length, a positive age and a positive byte bound")
    _require(c.bus.ingress_block_timeout > 0 and c.bus.ingress_lock_ttl > 0,
             "bus.ingress_block_timeout/ingress_lock_ttl", "must be > 0",
             "set positive seconds")
    _require(c.limits.outbound_buffer_limit > c.bus.history_max_bytes,
             "limits.outbound_buffer_limit",
             "must be larger than bus.history_max_bytes (a full replay must fit in a "
             "connection's outbound buffer, with room for the frames' envelopes, or a "
             "recovering client is closed 1013 on every reconnect)",
             "raise limits.outbound_buffer_limit or lower bus.history_max_bytes")
    _require(c.bus.idempotency_window > c.bus.request_timeout, "bus.idempotency_window",
             "must be longer than bus.request_timeout (a retried publish must be deduplicated)",
             "raise bus.idempotency_window above bus.request_timeout")
    _require(c.workers.max_restarts >= 0 and c.workers.restart_window > 0,
             "workers.max_restarts/restart_window", "must be >= 0 / > 0",
             "set valid restart limits")
    if c.database.dsn:
        _require(c.database.dsn.startswith(("postgresql://", "postgres://")), "database.dsn",
                 "not a PostgreSQL URL", "use postgresql://user@host:port/dbname")
        _require(1 <= c.database.pool_min_size <= c.database.pool_max_size,
                 "database.pool_min_size/pool_max_size", "need 1 <= min <= max",
                 "fix the pool sizes")
    if c.bus.redis_url:
        _require(c.bus.redis_url.startswith(("redis://", "rediss://", "unix://")), "bus.redis_url",
                 "not a Redis URL", "use redis://host:port/db")
    _require(c.notifications.pending_batch >= 1 and c.notifications.page_max >= 1,
             "notifications.pending_batch/page_max", "must be >= 1", "set positive numbers")
    try:
        c.domain.validate()
    except ValueError as exc:
        raise ConfigError(f"domain: {exc}") from exc
    adm = c.admin
    _require(adm.health_cache_seconds >= 0 and adm.refresh_seconds > 0
             and adm.stale_after > adm.refresh_seconds and adm.shared_alert_window >= 0
             and adm.link_ttl_max >= 1,
             "admin.health_cache_seconds/refresh_seconds/stale_after/shared_alert_window/"
             "link_ttl_max", "must be >= 0 / > 0 / > refresh_seconds / >= 0 / >= 1",
             "set the [admin] values as documented in rtserver.toml")
    _require(c.domain.monitoring_min_interval <= adm.refresh_seconds
             <= c.domain.monitoring_max_interval, "admin.refresh_seconds",
             "is outside domain.monitoring_min_interval..monitoring_max_interval (the console "
             "starts its monitoring stream with it)", "choose a refresh inside that range")
    _require(1 <= adm.room_rate_window <= 3600, "admin.room_rate_window",
             "must lie within 1..3600 seconds", "set a window such as 10")
    _require(adm.connection_state_history >= 2, "admin.connection_state_history",
             "must be >= 2 (the first state and the latest)", "set a bound such as 16")
    for network in adm.status_allow:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            _require(False, "admin.status_allow", f"{network!r} is not a network (CIDR)",
                     "list networks such as 127.0.0.1/32 or 10.0.0.0/8")
    _require(bool(c.namespaces), "namespaces", "no namespace is declared",
             "declare at least one [namespaces.NAME] table")
    for name in c.namespaces:
        _require(name.isidentifier() and name.islower(), f"namespaces.{name}",
                 "namespace names are lower-case identifiers", "rename the namespace")


def mask_value(key: str, value: Any) -> Any:
    """``value`` of the dotted ``key`` as logs and ``config show`` may print it.

    Secret keys (the JWT secret) become ``***``; a URL (DSN, Redis URL) keeps
    everything but its password (in the credentials or a ``password=`` query).
    """
    if key in _SECRET_KEYS:
        return "***" if value else value
    if isinstance(value, str):
        return mask_url_credentials(value)
    return value


def _mask_table(table: dict[str, Any], prefix: str) -> None:
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in _REPLACED_TABLES:
            _mask_table(value, dotted + ".")
        else:
            table[key] = mask_value(dotted, value)


def log_writer_settings(config: Config) -> LoopWriterSettings:
    """The loop log writer's settings (``server.log_buffer_warn_*``)."""
    return LoopWriterSettings(warn_bytes=config.server.log_buffer_warn_bytes,
                              warn_interval=config.server.log_buffer_warn_interval)


def masked(config: Config) -> dict[str, Any]:
    """The configuration as a dict with every value passed through :func:`mask_value`."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    _mask_table(data, "")
    return data


def effective_values(config: Config) -> dict[str, Any]:
    """Every setting by dotted key, masked (what ``rtserver config show`` prints)."""
    return dict(_leaves(masked(config)))

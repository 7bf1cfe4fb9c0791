"""The configuration's sections: one frozen msgspec Struct per TOML table.

Every key is explicit (no defaults here): the shipped, commented
``rtserver.toml`` holds every value, and :mod:`rtserver.config` loads and
validates the layers over it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from rtserver.domain_settings import DomainSettings

__all__ = [
    "AccessRule",
    "AdminConfig",
    "AuthConfig",
    "BusConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DomainsConfig",
    "FanoutConfig",
    "HeartbeatConfig",
    "LimitsConfig",
    "NamespaceConfig",
    "NotificationsConfig",
    "Section",
    "ServerConfig",
    "WorkersConfig",
]


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the fix."""


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of every section: frozen, unknown keys refused."""


class ServerConfig(Section, frozen=True):
    """``[server]``: listening socket, frames, shutdown."""

    host: str
    port: int
    ws_path: str
    log_level: Literal["debug", "info", "warning", "error"]
    max_message_bytes: int
    compression: bool
    backlog: int
    open_timeout: float
    close_timeout: float
    max_incoming_queue: int
    shutdown_grace: float
    dev: bool
    log_writer: Literal["loop", "direct", "background"]
    log_buffer_warn_bytes: int
    log_buffer_warn_interval: float
    gc_young_threshold: int
    allowed_origins: list[str]
    max_connections: int
    max_connections_per_address: int
    max_unauthenticated: int
    max_concurrent_auth: int
    connect_rate_per_second: float
    connect_rate_burst: int
    admission_retry_after: float
    certfile: str
    keyfile: str
    trusted_proxies: list[str]


class AuthConfig(Section, frozen=True):
    """``[auth]``: JWT verification and anonymous access."""

    jwt_secret: str
    jwt_algorithm: Literal["HS256", "RS256"]
    jwt_public_key_file: str
    jwt_private_key_file: str
    auth_timeout: float
    allow_anonymous: bool
    jwt_previous_secret: str
    jwt_audience: str
    jwt_issuer: str
    leeway: float
    max_token_lifetime: float


class LimitsConfig(Section, frozen=True):
    """``[limits]``: per-connection limits."""

    max_room_name_length: int
    max_subscriptions: int
    max_publish_key_length: int
    rate_limit_per_second: float
    rate_limit_burst: int
    max_errors_per_minute: int
    max_connections_per_user: int
    presence_member_limit: int
    outbound_buffer_limit: int
    max_json_depth: int
    client_error_log_interval: float


class HeartbeatConfig(Section, frozen=True):
    """``[heartbeat]``: liveness in both directions."""

    interval: float
    sweep_slices: int
    idle_timeout: float
    ws_ping: bool
    ws_ping_timeout: float


class FanoutConfig(Section, frozen=True):
    """``[fanout]``: which fan-out core delivers messages."""

    implementation: Literal["compiled", "python"]


class WorkersConfig(Section, frozen=True):
    """``[workers]``: worker processes on this machine."""

    count: int
    max_restarts: int
    restart_window: float
    restart_delay: float
    shutdown_grace: float
    hub_max_worker_buffer: int
    collect_timeout: float
    runtime_dir: str


class BusConfig(Section, frozen=True):
    """``[bus]``: how rooms span workers (embedded) and machines (Redis)."""

    redis_url: str
    reconnect_backoff_base: float
    reconnect_backoff_max: float
    reconnect_jitter: float
    connect_timeout: float
    request_timeout: float
    history_size: int
    history_ttl: float
    history_max_bytes: int
    idempotency_window: float
    presence_ttl: float
    presence_refresh_interval: float
    redis_key_prefix: str
    redis_max_connections: int
    publish_batch_max: int
    ingress_key: str
    ingress_block_timeout: float
    ingress_lock_ttl: float


class DatabaseConfig(Section, frozen=True):
    """``[database]``: PostgreSQL (empty dsn = no database features)."""

    dsn: str
    pool_min_size: int
    pool_max_size: int
    pool_acquire_timeout: float
    pool_max_inactive_lifetime: float
    connect_timeout: float
    migration_lock_timeout: float
    statement_timeout: float
    command_timeout: float
    record_flush_interval: float
    record_max_queued: int
    record_batch_max: int
    record_activity_interval: float
    retry_backoff_base: float
    retry_backoff_max: float
    ingress_channel: str
    ingress_keepalive_interval: float
    ingress_max_pending: int
    ingress_standby_retry_interval: float


class NotificationsConfig(Section, frozen=True):
    """``[notifications]``: push notification delivery."""

    pending_batch: int
    page_max: int


class DomainsConfig(Section, frozen=True):
    """``[domains]``: which domain plugins the server runs (see rtserver/plugin.py).

    ``enabled`` lists built-in names (``insurance``) or ``package.module:Class``;
    an empty list runs the real-time core alone.
    """

    enabled: list[str]


class AdminConfig(Section, frozen=True):
    """``[admin]``: the admin console (``/admin/``) and the admin HTTP routes.

    ``health_cache_seconds``: how long one ``/admin/health`` snapshot (with its
    database queries) is served again; ``refresh_seconds``: seconds between the
    console's cluster reads; ``stale_after``: seconds without a worker's answer
    after which the console shows it stale; ``shared_alert_window``: seconds in
    which a second alert for the same shared component (bus, database) and the
    same state is not raised again by another worker; ``link_ttl_max``: longest
    ``rtserver admin-url --ttl``; ``status_allow``: client networks (CIDR) that
    may read ``/healthz`` and ``/metrics`` without a token; ``room_rate_window``:
    seconds over which a room's messages/s is averaged (one counter per second per
    room); ``connection_state_history``: state transitions kept per connection.
    """

    health_cache_seconds: float
    refresh_seconds: float
    stale_after: float
    shared_alert_window: float
    link_ttl_max: int
    status_allow: list[str]
    room_rate_window: int
    connection_state_history: int


class AccessRule(Section, frozen=True):
    """Who may do one action in a namespace.

    ``access``: ``grant`` (a token room grant must match the room), ``owner``
    (the room key must equal the token's ``sub``), ``permission`` (the listed
    permissions alone suffice), ``deny`` (nobody, from a client). The listed
    ``permissions`` are required in every case but ``deny``.
    """

    permissions: list[str]
    access: Literal["grant", "owner", "permission", "deny"]


class NamespaceConfig(Section, frozen=True):
    """``[namespaces.NAME]``: rules for rooms ``NAME:key``."""

    subscribe: AccessRule
    publish: AccessRule
    room_events: bool
    presence: bool


class Config(Section, frozen=True):
    """The whole configuration."""

    server: ServerConfig
    auth: AuthConfig
    limits: LimitsConfig
    heartbeat: HeartbeatConfig
    fanout: FanoutConfig
    workers: WorkersConfig
    bus: BusConfig
    database: DatabaseConfig
    notifications: NotificationsConfig
    domains: DomainsConfig
    domain: DomainSettings
    admin: AdminConfig
    namespaces: dict[str, NamespaceConfig]

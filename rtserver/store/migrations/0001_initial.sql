-- rtserver schema, version 1.
--
-- Applied by `rtserver migrate` (rtserver.store.migrations.apply_migrations) inside one
-- transaction; recorded in schema_migrations. Identifiers of rtserver principals (the JWT
-- `sub` of users and admins) are TEXT: rtserver stores the token's subject as given, so an
-- audit record is never lost because a subject is not a UUID. Domain rows (customers, quotes)
-- use UUID keys.

CREATE TABLE customers (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    email       TEXT UNIQUE,
    name        TEXT,
    state       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE admin_users (
    id           TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
    email        TEXT NOT NULL UNIQUE,
    name         TEXT,
    permissions  TEXT[] NOT NULL DEFAULT '{}',
    is_active    BOOLEAN NOT NULL DEFAULT true,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE admin_activity_logs (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    admin_user_id  TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource_type  TEXT,
    resource_id    TEXT,
    status         TEXT NOT NULL,
    details        JSONB NOT NULL DEFAULT '{}',
    ip_address     INET,
    user_agent     TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX admin_activity_logs_created_idx ON admin_activity_logs (created_at DESC, id DESC);
CREATE INDEX admin_activity_logs_admin_idx ON admin_activity_logs (admin_user_id, created_at DESC);
CREATE INDEX admin_activity_logs_action_idx ON admin_activity_logs (action, created_at DESC);

CREATE TABLE admin_dashboards (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    admin_user_id   TEXT NOT NULL,
    dashboard_name  TEXT NOT NULL,
    configuration   JSONB NOT NULL,
    is_default      BOOLEAN NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT admin_dashboards_name_uniq UNIQUE (admin_user_id, dashboard_name)
);
-- At most one default dashboard per admin.
CREATE UNIQUE INDEX admin_dashboards_one_default ON admin_dashboards (admin_user_id)
    WHERE is_default;

CREATE TABLE system_alerts (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_type   TEXT NOT NULL,
    severity     TEXT NOT NULL
                 CONSTRAINT system_alerts_severity_check
                 CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    message      TEXT NOT NULL,
    details      JSONB NOT NULL DEFAULT '{}',
    resolved     BOOLEAN NOT NULL DEFAULT false,
    resolved_at  TIMESTAMPTZ,
    resolved_by  TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT system_alerts_resolution_check
        CHECK (resolved = (resolved_at IS NOT NULL))
);
CREATE INDEX system_alerts_unresolved_idx ON system_alerts (created_at DESC, id DESC)
    WHERE NOT resolved;
CREATE INDEX system_alerts_created_idx ON system_alerts (created_at DESC);

-- One row per WebSocket connection, upserted in batches by the ConnectionRecorder.
-- connected_at is NULL only when the connect record was lost (counted as a lost record).
CREATE TABLE websocket_connections (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection_id    TEXT NOT NULL UNIQUE,
    user_id          TEXT,
    admin_user_id    TEXT,
    ip_address       INET,
    user_agent       TEXT,
    worker           INTEGER NOT NULL,
    connected_at     TIMESTAMPTZ,
    disconnected_at  TIMESTAMPTZ,
    last_activity    TIMESTAMPTZ,
    close_code       INTEGER,
    close_reason     TEXT
);
CREATE INDEX websocket_connections_user_idx ON websocket_connections (user_id, connected_at DESC);
CREATE INDEX websocket_connections_connected_idx ON websocket_connections (connected_at DESC);
CREATE INDEX websocket_connections_open_idx ON websocket_connections (worker)
    WHERE disconnected_at IS NULL;

CREATE TABLE quotes (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id    UUID REFERENCES customers (id) ON DELETE SET NULL,
    state          TEXT,
    status         TEXT NOT NULL,
    total_premium  NUMERIC(14, 2),
    fields         JSONB NOT NULL DEFAULT '{}'
                   CONSTRAINT quotes_fields_object_check CHECK (jsonb_typeof(fields) = 'object'),
    version        INTEGER NOT NULL DEFAULT 1 CONSTRAINT quotes_version_check CHECK (version >= 1),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by     TEXT,
    converted_at   TIMESTAMPTZ
);
CREATE INDEX quotes_created_idx ON quotes (created_at DESC);
CREATE INDEX quotes_customer_idx ON quotes (customer_id);
CREATE INDEX quotes_status_created_idx ON quotes (status, created_at DESC);

CREATE TABLE notifications (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       TEXT NOT NULL,
    title         TEXT NOT NULL,
    body          TEXT NOT NULL,
    data          JSONB NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at  TIMESTAMPTZ,
    read_at       TIMESTAMPTZ
);
-- Order of a user's notifications is id order (insertion order; created_at is informational
-- and may tie or interleave between concurrent transactions).
CREATE INDEX notifications_user_idx ON notifications (user_id, id);
CREATE INDEX notifications_pending_idx ON notifications (user_id, id) WHERE delivered_at IS NULL;
CREATE INDEX notifications_unread_idx ON notifications (user_id, id) WHERE read_at IS NULL;

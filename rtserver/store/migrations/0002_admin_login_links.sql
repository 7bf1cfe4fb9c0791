-- Single-use admin login links (`rtserver admin-url`, docs/admin.md): the jti of every
-- link exchanged for a console session. The primary key makes exactly one exchange of a
-- link succeed, whichever worker or node answers it; a second use finds the row (and who
-- used the link first). Rows of expired links may be deleted at any time.
CREATE TABLE admin_login_links (
    jti         TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    used_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    ip_address  INET,
    user_agent  TEXT
);
CREATE INDEX admin_login_links_expires_idx ON admin_login_links (expires_at);

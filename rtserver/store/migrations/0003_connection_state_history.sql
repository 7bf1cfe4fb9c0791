-- The state transitions of a connection (connecting, authenticated, closing, closed, ...),
-- each {"state", "at" (Unix seconds), "reason", "close_code"}, written with its close record
-- (bounded by admin.connection_state_history).
ALTER TABLE websocket_connections ADD COLUMN state_history JSONB;

"""Fixtures of the ingress tests: the store tests' real PostgreSQL fixtures."""

from __future__ import annotations

from tests.store.conftest import pg_dsn, store

__all__ = ["pg_dsn", "store"]

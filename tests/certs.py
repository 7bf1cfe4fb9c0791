"""Throw-away TLS material for tests (the implementation is the bench's, shared)."""

from __future__ import annotations

from rtserver.bench.selfsigned import TlsFiles, make_tls_files

__all__ = ["TlsFiles", "make_tls_files"]

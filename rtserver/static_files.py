"""Read-only static files on the WebSocket port: the JavaScript SDK and the examples.

``GET /client/<file>`` serves the SDK modules shipped in the package
(``rtserver/static/client``, the ``clients/js/src`` directory of the source
tree), so a page imports ``/client/rtserver-client.js`` with no build step.
``GET /examples/<file>`` serves the example pages (``rtserver/static/examples``)
only when ``server.dev`` is on.

Rules: one path segment per file (``[A-Za-z0-9][A-Za-z0-9._-]*``, nothing
above the directory, no directory listing), a known suffix (the content type
comes from it), ``ETag`` = the file's SHA-256 with ``If-None-Match`` -> 304,
``Cache-Control: no-cache`` (browsers revalidate each time and get a 304 while
the file is unchanged). Every refusal is a JSON body with a required action, a
log line and ``rtserver_static_requests_total{prefix,status}``.
"""

from __future__ import annotations

import hashlib
import http
import re
from dataclasses import dataclass
from pathlib import Path

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response

from rtserver import jsonlog
from rtserver.metrics import REGISTRY

__all__ = ["CONTENT_TYPES", "STATIC_ROOT", "StaticDirectory", "StaticFiles"]

log = jsonlog.get_logger("rtserver.static_files")

#: The package directory holding ``client/`` and ``examples/``.
STATIC_ROOT = Path(__file__).resolve().parent / "static"

#: Served suffixes and their content types (longest suffix first).
CONTENT_TYPES: dict[str, str] = {
    ".d.ts": "application/typescript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_REQUESTS = REGISTRY.counter(
    "rtserver_static_requests_total", "Static file requests (/client/, /examples/) by answer",
    ("prefix", "status"))


@dataclass(frozen=True)
class _Cached:
    mtime_ns: int
    size: int
    etag: str
    body: bytes


def _json_response(status: http.HTTPStatus, error: str, message: str, action: str) -> Response:
    body = orjson.dumps({"error": error, "message": message, "action": action})
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


def _content_type(name: str) -> str | None:
    for suffix, content_type in CONTENT_TYPES.items():
        if name.endswith(suffix):
            return content_type
    return None


class StaticDirectory:
    """The files of one directory under one URL prefix (``/client/``)."""

    def __init__(self, prefix: str, root: Path) -> None:
        self.prefix = prefix
        self.root = root
        self._cache: dict[str, _Cached] = {}

    def serve(self, name: str, headers: Headers) -> Response:
        """The answer for ``GET {prefix}{name}`` (``headers``: the request's)."""
        label = self.prefix.strip("/")
        if not _NAME.fullmatch(name) or _content_type(name) is None:
            return self._refuse(label, http.HTTPStatus.NOT_FOUND, name,
                                f"Required action: request a file of {self.prefix} by its name "
                                f"(suffixes {', '.join(CONTENT_TYPES)}); no subdirectories")
        root = self.root.resolve()
        if not root.is_dir():
            log.error("static_root_missing", prefix=self.prefix, root=str(self.root))
            _REQUESTS.inc(label, "500")
            return _json_response(
                http.HTTPStatus.INTERNAL_SERVER_ERROR, "static_root_missing",
                f"{self.root} does not exist in this installation",
                "Required action: reinstall rtserver (the package ships rtserver/static/)")
        path = (root / name).resolve()
        if path.parent != root or not path.is_file():
            return self._refuse(label, http.HTTPStatus.NOT_FOUND, name,
                                f"Required action: request one of the files in {self.prefix}")
        entry = self._load(name, path)
        content_type = _content_type(name)
        assert content_type is not None
        common = [("ETag", entry.etag), ("Cache-Control", "no-cache")]
        if entry.etag in _if_none_match(headers):
            _REQUESTS.inc(label, "304")
            return Response(304, "Not Modified", Headers([*common, ("Content-Length", "0")]), b"")
        _REQUESTS.inc(label, "200")
        return Response(200, "OK", Headers([("Content-Type", content_type),
                                            ("Content-Length", str(len(entry.body))), *common]),
                        entry.body)

    def _load(self, name: str, path: Path) -> _Cached:
        stat = path.stat()
        cached = self._cache.get(name)
        if cached is not None and (cached.mtime_ns, cached.size) == (stat.st_mtime_ns,
                                                                     stat.st_size):
            return cached
        body = path.read_bytes()
        entry = _Cached(stat.st_mtime_ns, stat.st_size,
                        '"' + hashlib.sha256(body).hexdigest()[:32] + '"', body)
        self._cache[name] = entry
        return entry

    def _refuse(self, label: str, status: http.HTTPStatus, name: str, action: str) -> Response:
        log.info("static_not_found", prefix=self.prefix, name=name[:200])
        _REQUESTS.inc(label, str(status.value))
        return _json_response(status, "not_found", f"no file {name[:200]!r} in {self.prefix}",
                              action)


def _if_none_match(headers: Headers) -> set[str]:
    tags: set[str] = set()
    for value in headers.get_all("If-None-Match"):
        for part in value.split(","):
            tag = part.strip()
            if tag.startswith("W/"):
                tag = tag[2:]
            tags.add(tag)
    return tags


class StaticFiles:
    """The static routes of one worker: ``/client/`` always, ``/examples/`` with ``dev``."""

    def __init__(self, *, dev: bool, root: Path = STATIC_ROOT) -> None:
        self.dev = dev
        self.client = StaticDirectory("/client/", root / "client")
        self.examples = StaticDirectory("/examples/", root / "examples")

    def response(self, path: str, headers: Headers) -> Response | None:
        """The answer for a static path, or None when ``path`` is not one."""
        if path.startswith("/client/"):
            return self.client.serve(path[len("/client/"):], headers)
        if path.startswith("/examples/") or path == "/examples":
            if not self.dev:
                log.info("examples_not_served", path=path[:200])
                _REQUESTS.inc("examples", "404")
                return _json_response(
                    http.HTTPStatus.NOT_FOUND, "not_found",
                    "the examples are served in development mode only",
                    "Required action: start the server with --dev (server.dev = true) to "
                    "open /examples/")
            name = path[len("/examples/"):] or "index.html"
            return self.examples.serve(name, headers)
        return None

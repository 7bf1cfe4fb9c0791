"""TLS directly on the WebSocket port: the server's SSL context from ``server.certfile/keyfile``.

Both keys empty means plain TCP (``ws://``). Each worker process builds its
own context from the two paths (the supervisor passes the configuration, never
a context). A missing, unreadable or invalid certificate or key is a
:class:`~rtserver.startup.StartupError` with exit status ``EXIT_CONFIG``;
``rtserver serve`` checks it once before any worker starts.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtserver.startup import EXIT_CONFIG, StartupError

if TYPE_CHECKING:
    from rtserver.config_sections import ServerConfig

__all__ = ["server_ssl_context", "server_tls_options"]

_ACTION = ("give a readable PEM certificate chain and its PEM private key with "
           "--certfile/--keyfile (RTSERVER_CERTFILE/RTSERVER_KEYFILE, server.certfile/"
           "server.keyfile), or leave both empty for plain TCP behind a TLS-terminating proxy")


def _readable(path: str, what: str) -> None:
    try:
        with Path(path).open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise StartupError(EXIT_CONFIG, f"TLS {what} {path} cannot be read "
                           f"({exc.strerror or exc})", _ACTION) from exc


def server_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext | None:
    """The server-side SSL context (TLS 1.2 or later), or None when both paths are empty.

    Raises :class:`~rtserver.startup.StartupError` (``EXIT_CONFIG``) when only
    one path is given, a file cannot be read, or the pair is not a valid PEM
    certificate chain with its matching key.
    """
    if not certfile and not keyfile:
        return None
    if not certfile or not keyfile:
        raise StartupError(EXIT_CONFIG, "only one of server.certfile and server.keyfile is set",
                           _ACTION)
    _readable(certfile, "certificate file")
    _readable(keyfile, "key file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def encrypted() -> bytes:
        # Called only for an encrypted key; without it OpenSSL would prompt on the terminal.
        raise StartupError(EXIT_CONFIG, f"TLS key file {keyfile} is encrypted with a "
                           "passphrase", "store the key unencrypted, readable only by the "
                           "service user (chmod 600)")

    try:
        context.load_cert_chain(certfile, keyfile, password=encrypted)
    except ssl.SSLError as exc:
        raise StartupError(
            EXIT_CONFIG, f"TLS certificate {certfile} with key {keyfile} is not usable "
            f"({exc.reason or exc}: not PEM, or the key does not match the certificate)",
            _ACTION) from exc
    return context


def server_tls_options(context: ssl.SSLContext | None, server: ServerConfig) -> dict[str, Any]:
    """The TLS keyword arguments of ``serve`` / ``loop.create_server``: the context and
    explicit bounds for the TLS handshake (``server.open_timeout``, before the WebSocket
    handshake's own) and the TLS shutdown (``server.close_timeout``); none without TLS."""
    if context is None:
        return {}
    return {"ssl": context, "ssl_handshake_timeout": server.open_timeout,
            "ssl_shutdown_timeout": server.close_timeout}

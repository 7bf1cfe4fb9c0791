"""Credential masking for log output (pure string functions, no rtserver imports).

* :func:`mask_url_credentials` hides the password of a URL's userinfo
  (``redis://:pw@host``, ``postgresql://user:pw@host/db``) and
  password-like query parameters (``?password=...``).
* :func:`redact_text` hides every credential shape rtserver may see in free
  text (library log lines, request/header dumps, frame dumps): URL
  credentials, ``token=`` query values, ``Authorization`` header values,
  bearer tokens, JWTs and JSON ``"token"`` fields.
* :func:`mask_credentials_in` applies :func:`mask_url_credentials` to every
  string of a nested configuration dict.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "mask_credentials_in", "mask_url_credentials", "redact_text"]

#: What a hidden value is replaced with.
MASK = "***"

_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s?#]*):(?P<password>[^/\s?#]*)@")
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&;](?:password|passwd|pass|pwd|secret|access_token|token|"
    r"sslpassword|auth)=)(?P<value>[^&;#\s'\"]*)")
_AUTH_HEADER = re.compile(
    r"(?i)(?P<key>\b(?:proxy-)?authorization\s*[:=]\s*)(?P<value>[^\r\n'\"]+)")
_BEARER = re.compile(r"(?i)(?P<key>\bbearer\s+)(?P<value>[A-Za-z0-9._~+/=-]+)")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_JSON_TOKEN = re.compile(r'(?i)(?P<key>\\?"(?:token|secret|password|jwt_secret)\\?"\s*:\s*\\?")'
                         r'(?P<value>[^"\\]*)')


def mask_url_credentials(url: str) -> str:
    """``url`` with the userinfo password and password-like query values masked."""
    if "://" not in url and "=" not in url:
        return url
    masked = _URL_USERINFO.sub(
        lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", masked)


def redact_text(text: str) -> str:
    """``text`` with every credential shape masked (see the module docstring)."""
    text = mask_url_credentials(text)
    text = _AUTH_HEADER.sub(lambda m: f"{m['key']}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m['key']}{MASK}", text)
    text = _JSON_TOKEN.sub(lambda m: f"{m['key']}{MASK}", text)
    return _JWT.sub(MASK, text)


def mask_credentials_in(data: Any) -> Any:
    """A copy of nested dicts/lists with :func:`mask_url_credentials` on every string."""
    if isinstance(data, str):
        return mask_url_credentials(data)
    if isinstance(data, dict):
        return {k: mask_credentials_in(v) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_credentials_in(v) for v in data]
    return data

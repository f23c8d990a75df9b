"""Secret request headers: the deny-list of headers keystate neither stores in Kafka nor forwards to handlers.

Every invocation's request headers travel in records that live for days (keystate.log, the status
and journal changelogs). Headers named in the deny-list are dropped where a request enters keystate
(the HTTP ingress and the keystate.requests router), so they reach no record and no handler. A
service that needs one declares it (`forward_headers=[...]` in the SDK, `forwardHeaders` in the
manifest); it is then forwarded and stored like every other header.

The list: `KEYSTATE_REDACT_HEADERS` or `--redact-headers` (comma-separated, case-insensitive;
an empty value turns redaction off), default `DEFAULT_REDACT_HEADERS`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping

from .errors import ContractError

__all__ = ["DEFAULT_REDACT_HEADERS", "REDACT_HEADERS_ENV", "redact_headers", "strip_secrets"]

REDACT_HEADERS_ENV = "KEYSTATE_REDACT_HEADERS"
DEFAULT_REDACT_HEADERS: frozenset[str] = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def redact_headers(value: str | Collection[str] | None = None) -> frozenset[str]:
    """The deny-list: `value` (a comma-separated string or names), else `$KEYSTATE_REDACT_HEADERS`, else the default.

    Raises `ContractError` for a name that is not an HTTP header name.
    """
    if value is None:
        value = os.environ.get(REDACT_HEADERS_ENV)
        if value is None:
            return DEFAULT_REDACT_HEADERS
    names = value.split(",") if isinstance(value, str) else list(value)
    out = set()
    for name in names:
        name = name.strip()
        if not name:
            continue
        if not _HEADER_NAME.fullmatch(name):
            raise ContractError(
                f"{name[:60]!r} is not an HTTP header name; give {REDACT_HEADERS_ENV} or --redact-headers as "
                "comma-separated names, e.g. authorization,cookie"
            )
        out.add(name.lower())
    return frozenset(out)


def strip_secrets(
    headers: Mapping[str, str], denied: Collection[str], allowed: Collection[str] = ()
) -> dict[str, str]:
    """`headers` without those in `denied` (lower-case names) unless in `allowed`; names compared case-insensitively."""
    if not denied:
        return dict(headers)
    return {k: v for k, v in headers.items() if k.lower() not in denied or k.lower() in allowed}

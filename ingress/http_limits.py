"""Explicit limits on the request line and headers, answered as JSON errors by the apps themselves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from aiohttp import web
from aiohttp.typedefs import Handler

from .errors import BadRequest, HeadersTooLarge, UriTooLong

__all__ = ["HTTP_LIMITS_KEY", "HttpLimits", "limits_middleware", "parser_options"]

KiB = 1024
# aiohttp's own parser defaults (8190 bytes) answer in plain text and log a traceback.
_PARSER_MINIMUM = 8190


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """`max_url_bytes`: path plus query; `max_header_bytes`: all header lines together."""

    max_url_bytes: int = 64 * KiB
    max_header_bytes: int = 64 * KiB


HTTP_LIMITS_KEY = web.AppKey("http_limits", HttpLimits)


class ParserOptions(TypedDict):
    max_line_size: int
    max_field_size: int


def parser_options(limits: HttpLimits) -> ParserOptions:
    """Keyword arguments for `web.AppRunner`: a parser that lets requests over the limits through.

    The parser allows twice the limits, so a request between the limit and twice it reaches the
    app and gets a JSON 414/431 that names the limit; only beyond that aiohttp answers itself.
    """
    return {
        "max_line_size": max(_PARSER_MINIMUM, 2 * limits.max_url_bytes),
        "max_field_size": max(_PARSER_MINIMUM, 2 * limits.max_header_bytes),
    }


@web.middleware
async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse over-long URLs and headers, and headers that are not UTF-8, before any route runs."""
    limits = request.app.get(HTTP_LIMITS_KEY) or HttpLimits()
    url_bytes = len(request.raw_path.encode("utf-8", "surrogateescape"))
    if url_bytes > limits.max_url_bytes:
        raise UriTooLong(
            f"the request path and query have {url_bytes} bytes, over the limit of {limits.max_url_bytes} "
            "(max_url_bytes); use shorter keys and ids, or send long values in the body"
        )
    header_bytes = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
    if header_bytes > limits.max_header_bytes:
        raise HeadersTooLarge(
            f"the request headers have {header_bytes} bytes, over the limit of {limits.max_header_bytes} "
            "(max_header_bytes); send fewer or shorter headers, or put large values in the body"
        )
    for name, value in request.raw_headers:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(
                f"the value of header {name.decode('latin-1')[:100]!r} is not valid UTF-8; headers are forwarded "
                "to handlers as text, encode binary values (e.g. base64)"
            ) from None
    return await handler(request)

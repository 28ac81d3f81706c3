"""A failed HTTP response in agentrt's terms: the error for its status, its message, Retry-After."""

from __future__ import annotations

import email.utils
import json
import time

import httpx

from agentrt.errors import BadResponse, RateLimited, SubstrateTimeout, SubstrateUnavailable
from agentrt.redact import redact

__all__ = ["error_message", "retry_after_s", "status_error"]


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body's start."""
    try:
        data = json.loads(body)
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data["error"]
        return str(message)
    except (ValueError, KeyError, TypeError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


def status_error(
    response: httpx.Response, *, name: str, shown_url: str, key_hint: str
) -> Exception:
    """The error for a non-200 ``response`` (its body read) from the server at ``shown_url``.

    429 → `RateLimited`, 408 → `SubstrateTimeout`, 5xx → `SubstrateUnavailable` (both with the
    server's Retry-After), anything else → `BadResponse`, with ``key_hint`` on 401 and 403.
    """
    status = response.status_code
    # The body is the server's: it may echo the request's Authorization header or URL.
    message = f"{name}: HTTP {status} from {shown_url}: "
    message += redact(error_message(response.content))
    retry_after = retry_after_s(response.headers.get("retry-after"))
    if status == 429:
        return RateLimited(message, retry_after_s=retry_after)
    if status == 408:
        return SubstrateTimeout(message)
    if status >= 500:
        return SubstrateUnavailable(message, retry_after_s=retry_after)
    if status in (401, 403):
        message += f" ({key_hint})"
    return BadResponse(message)

"""Secret redaction: `redact()`, the one function every log line, span, error and URL goes through.

agentrt shows URLs, server error bodies and exception messages in its logs, traces, results and
terminal output. Any of them may carry a credential: ``http://user:KEY@host/v1``,
``...?api-key=KEY``, or a 401 body that echoes the ``Authorization`` header it received. `redact`
replaces each of these with ``***``:

- the user-info of any URL (``scheme://user:pass@`` becomes ``scheme://***@``);
- the value of a URL query parameter whose name looks secret (``api-key``, ``api_key``, ``key``,
  ``token``, ``access_token``, ``secret``, ``password``, ``sig``, ``signature``, ``auth``, ...; any
  case, and any name ending in ``key``, ``token``, ``secret`` or ``password``);
- ``Authorization``-style values (``Bearer ...``, ``Basic ...``, ``x-api-key: ...``,
  ``api_key='...'``, ``"token": "..."``, ``password=...``);
- every value registered with `register_secret` (the ``openai_http`` substrate registers its API
  key and the password and secret query values of its ``base_url`` when it is built), in plain,
  URL-quoted and Basic-auth (base64) forms.

Where it is applied: `agentrt.log` (a structlog processor, `redact_event`, in
`agentrt.log.configure_logging`'s pipeline and in front of any pipeline an application configured),
the span exporters `agentrt.telemetry.configure` sets up (every attribute, event and status), the
error texts of spans and of `agentrt.RunResult`, and the messages of ``openai_http``'s errors.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, Final
from urllib.parse import quote, unquote

__all__ = ["MARK", "redact", "redact_event", "redact_value", "register_secret"]

#: What a secret is replaced with.
MARK: Final = "***"

#: Registered values shorter than this are ignored: redacting every "ab" would garble all output,
#: and a key that short protects nothing.
_MIN_SECRET_LEN: Final = 3

# A query parameter's name "looks secret" if it ends in key/token/secret/... or is auth/session.
_SECRET_NAME: Final = (
    r"(?:[\w.~-]*?(?:key|token|secret|password|passwd|pwd|credentials?|signature|sig)"
    r"|auth|authorization|session)"
)
# Each pattern runs only when a cheap substring test says it could match (see `redact`), so a
# short string without one costs well under a microsecond.
_USERINFO: Final = re.compile(r"://[^/\s@?#'\"<>]+@")
# (?!\*\*\*): a value redacted before is left alone, so that redacting twice changes nothing;
# a ':' ends a value only before a space ("from URL: message").
_QUERY: Final = re.compile(
    rf"([?&;]{_SECRET_NAME}=)(?!\*\*\*)(?:[^&#\s'\"<>;:]|:(?!\s|$))+", re.IGNORECASE
)
# Header-style values ("Authorization: Bearer X", "'api_key': 'X'", "x-api-key=X", "Basic X").
# Searched in the ASCII-lowercased text, one pattern per keyword: each starts with a literal, which
# the regex engine finds with a fast scan. A case-insensitive alternation with word boundaries
# took ~60 ms per MB (a 10,000-step `--json` document is 8 MB); these take a few.
_SEPARATOR: Final = r"""['"]?\s*[:=]\s*['"]?(?:(?:bearer|basic|token|digest)\s+)?"""
_HEADER_KEYWORDS: Final = (
    "authorization",  # and proxy-authorization
    "api-key",  # and x-api-key
    "api_key",
    "apikey",
    "token",  # and access_token, auth-token, ...
    "secret",  # and client_secret
    "password",
    "passwd",
)
_HEADERS: Final = tuple(
    (word, re.compile(rf"{re.escape(word)}{_SEPARATOR}(?P<value>[^\s'\",;}}&#]+)"))
    for word in _HEADER_KEYWORDS
) + tuple(
    (word, re.compile(rf"\b{word}\s+(?P<value>[a-z0-9._~+/=-]{{8,}})"))
    for word in ("bearer", "basic")
)
_UNCHANGED: Final = frozenset({bool, int, float, type(None)})
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_lock = threading.Lock()
_secrets: set[str] = set()
# None when nothing is registered; rebuilt (longest first) on every registration.
_secret_pattern: re.Pattern[str] | None = None
# Short strings (ids, names, levels) recur in every log event: their redaction is remembered.
# A registration replaces the dict (never clears it), so a result computed with the old secrets
# can only land in a dict no longer read.
_CACHE_MAX_LEN: Final = 80
_CACHE_SIZE: Final = 4096
_cache: dict[str, str] = {}


def register_secret(value: str | None, *, user: str | None = None) -> None:
    """Add a value that must never be shown: `redact` replaces it wherever it appears.

    The value is also registered URL-quoted, and, with ``user``, as the base64 ``user:value``
    credential of HTTP Basic authentication (what a server sees for ``http://user:value@host``).
    Values shorter than 3 characters and ``None`` are ignored. Registration lasts for the process.

    Example:
        >>> register_secret("sk-doc-0123456789")
        >>> redact("401: you sent Authorization: sk-doc-0123456789 (invalid)")
        '401: you sent Authorization: *** (invalid)'

    Args:
        value: the secret (an API key, a password).
        user: the user name it is paired with in a URL, if any.
    """
    if not value:
        return
    forms = {value, quote(value, safe=""), unquote(value)}
    if user is not None:
        for u, v in ((user, value), (unquote(user), unquote(value))):
            forms.add(base64.b64encode(f"{u}:{v}".encode()).decode("ascii"))
    forms = {f for f in forms if len(f) >= _MIN_SECRET_LEN}
    global _secret_pattern, _cache
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered))
        _cache = {}


def redact(text: str) -> str:
    """``text`` with every credential replaced by ``***`` (see the module docstring for which).

    Example:
        >>> redact("HTTP 401 from http://me:hunter22@api.example.com/v1?api-key=abc123&x=1")
        'HTTP 401 from http://***@api.example.com/v1?api-key=***&x=1'
        >>> redact("the server said: Authorization: Bearer sk-live-1234567890")
        'the server said: Authorization: Bearer ***'
    """
    cache = _cache
    pattern = _secret_pattern
    known = cache.get(text)
    if known is not None:
        return known
    original = text
    if pattern is not None:
        text = pattern.sub(MARK, text)
    if "://" in text:
        text = _USERINFO.sub(f"://{MARK}@", text)
    if "=" in text and ("?" in text or "&" in text or ";" in text):
        text = _QUERY.sub(rf"\g<1>{MARK}", text)
    text = _redact_headers(text)
    if len(original) <= _CACHE_MAX_LEN:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[original] = text
    return text


def _redact_headers(text: str) -> str:
    """Replace the value after each header-style keyword (any case) with `MARK`."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few non-ASCII letters lowercase to two characters
        lowered = text.translate(_ASCII_LOWER)
    spans: list[tuple[int, int]] = []
    for word, pattern in _HEADERS:
        if word in lowered:
            spans.extend(m.span("value") for m in pattern.finditer(lowered))
    if not spans:
        return text
    spans.sort()
    pieces: list[str] = []
    done = 0
    for start, end in spans:
        if start < done:  # overlaps the value just hidden: hide up to the later end
            done = max(done, end)
            continue
        pieces.append(text[done:start])
        pieces.append(MARK)
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def redact_value(value: Any) -> Any:
    """`redact` applied to a string, or to every string inside a dict, list or tuple.

    Numbers, booleans and ``None`` come back unchanged; any other object is replaced by its
    redacted ``repr`` only if that contained a secret.

    Example:
        >>> redact_value({"url": "http://u:pw1234@h/v1", "tries": 2})
        {'url': 'http://***@h/v1', 'tries': 2}
    """
    cls = type(value)
    if cls is str:
        return redact(value)
    if cls in _UNCHANGED:
        return value
    if cls is dict:
        return {k: redact_value(v) for k, v in value.items()}
    if cls is list:
        return [redact_value(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    shown = repr(value)
    hidden = redact(shown)
    return value if hidden == shown else hidden


def redact_event(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: `redact` every value of the event, including a raised exception.

    `agentrt.log.configure_logging` runs it on every event, after the context variables are
    merged in; agentrt's own loggers put it before the renderer of any pipeline an application
    configured without it. An ``exc_info`` is formatted into the
    ``exception`` key here (redacted), since a traceback cannot be redacted once rendered.

    Example:
        >>> redact_event(None, "info", {"event": "x", "url": "http://u:pw12345@h/v1"})
        {'event': 'x', 'url': 'http://***@h/v1'}
    """
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        import structlog

        text = structlog.processors.format_exc_info(None, method_name, {"exc_info": exc_info})
        if "exception" in text:
            event_dict["exception"] = text["exception"]
    for key, value in event_dict.items():
        event_dict[key] = redact_value(value)
    return event_dict

"""`agentrt.redact`: what is hidden, what is left alone; redacting twice changes nothing."""

from __future__ import annotations

import base64
import threading

import pytest

from agentrt.redact import MARK, redact, redact_event, redact_value, register_secret


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:pass1234@host:8000/v1", "http://***@host:8000/v1"),
        ("https://tok3n@api.example.com", "https://***@api.example.com"),
        ("GET /v1?api-key=abc&model=m", "GET /v1?api-key=***&model=m"),
        ("x?API_KEY=abc;y", "x?API_KEY=***;y"),
        ("u?key=1&token=2&access_token=3&secret=4&password=5&sig=6", "u?key=***&token=***"
         "&access_token=***&secret=***&password=***&sig=***"),
        ("u?X-Amz-Signature=ab&X-Amz-Credential=cd&X-Amz-Date=1", "u?X-Amz-Signature=***"
         "&X-Amz-Credential=***&X-Amz-Date=1"),
        ("from http://h/v1?api-key=k9: denied", "from http://h/v1?api-key=*** denied"),
        ("Authorization: Bearer sk-live-abcdef", "Authorization: Bearer ***"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', '{"authorization": "Basic ***"}'),
        ("x-api-key: abc123 rest", "x-api-key: *** rest"),
        ("cannot build with {'api_key': 'k-1234', 'model': 'm'}",
         "cannot build with {'api_key': '***', 'model': 'm'}"),
        ("the bearer sk-abcdefgh12 was refused", "the bearer *** was refused"),
        ("X-API-KEY: k1, PROXY-Authorization=Basic QWxhZGRpbjpvcGVu", "X-API-KEY: ***, "
         "PROXY-Authorization=Basic ***"),
        ('İstanbul {"Token": "t0k3n", "client_SECRET": "c5"}', 'İstanbul {"Token": "***", '
         '"client_SECRET": "***"}'),  # İ lowercases to two characters: positions still line up
        ("access_token=abc password=pw", "access_token=*** password=***"),
    ],
)  # fmt: skip
def test_credentials_are_hidden(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "step_finished attempts=1 output_tokens=5 input_tokens=8 latency_s=0.2",
        "http://localhost:8000/v1/chat/completions?model=m&stream=true",
        "Basic usage: 3 tokens per step",
        "run 4d3781d10137466e · p · real time",
        "2026-12-06T15:22:09.860066Z",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_registered_secrets_are_hidden_in_every_form() -> None:
    register_secret("p@ss-w0rd/42", user="alice")
    quoted = "p%40ss-w0rd%2F42"
    basic = base64.b64encode(b"alice:p@ss-w0rd/42").decode()
    for shown in ("p@ss-w0rd/42", quoted, basic):
        assert redact(f"the server said {shown}!") == f"the server said {MARK}!"


def test_short_or_empty_values_are_not_registered() -> None:
    register_secret("")
    register_secret(None)
    register_secret("ab")
    assert redact("ab a b c") == "ab a b c"
    register_secret("K3Y")  # three characters are enough
    assert redact("a K3Y b") == "a *** b"


def test_registration_is_seen_by_later_calls_even_for_remembered_strings() -> None:
    text = "echo sk-late-registered-1"
    assert redact(text) == text  # remembered as harmless...
    register_secret("sk-late-registered-1")
    assert redact(text) == f"echo {MARK}"  # ... until the value is registered


def test_concurrent_registration_and_redaction() -> None:
    values = [f"sk-thread-{i:04d}-secret" for i in range(200)]

    def register() -> None:
        for v in values:
            register_secret(v)

    thread = threading.Thread(target=register)
    thread.start()
    for v in values:
        redact(f"x {v} y")
    thread.join()
    assert all(redact(f"x {v} y") == f"x {MARK} y" for v in values)


def test_structured_values_and_events() -> None:
    value = {"urls": ["http://a:b12345@h", 3], "ok": True, "n": None}
    assert redact_value(value) == {"urls": ["http://***@h", 3], "ok": True, "n": None}
    assert redact_value(ValueError("?token=zz9")) == "ValueError: ?token=***"
    try:
        raise RuntimeError("Authorization: Bearer sk-in-traceback-1")
    except RuntimeError:
        event = redact_event(None, "error", {"event": "boom", "exc_info": True})
    assert "exc_info" not in event
    assert "Bearer ***" in event["exception"]
    assert "sk-in-traceback-1" not in event["exception"]

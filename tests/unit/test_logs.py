"""The redaction layer of the logs: tokens, Vault material and exception messages."""

from __future__ import annotations

import json
import logging
import sys

from service.logs import RedactingJsonFormatter, RedactionFilter, redact, safe_trace


def test_redacts_bearer_tokens_vault_tokens_and_ciphertexts() -> None:
    text = (
        "Authorization: Bearer snt_AbCdEf0123456789_-xyz token=hvs.CAESIJ0123456789abcdefghij "
        "wrapped=vault:v3:QUJDREVGR0hJSktMTU5PUA== secret_id=1234-abcd password=hunter2"
    )
    out = redact(text)
    for secret in (
        "snt_AbCdEf0123456789_-xyz",
        "hvs.CAESIJ0123456789abcdefghij",
        "QUJDREVGR0hJSktMTU5PUA==",
        "1234-abcd",
        "hunter2",
    ):
        assert secret not in out
    assert "vault:v?:[REDACTED]" in out


def record_with_exception(message: str) -> logging.LogRecord:
    try:
        try:
            raise ValueError(f"bad value {message!r}")
        except ValueError as inner:
            raise RuntimeError(f"wrapped {message}") from inner
    except RuntimeError:
        exc_info = sys.exc_info()
    return logging.LogRecord("t", logging.ERROR, __file__, 1, "failed %s", ("x",), exc_info)


def test_exception_traces_keep_frames_and_types_but_never_messages() -> None:
    record = record_with_exception("CANARY-secret-body")
    line = RedactingJsonFormatter().format(record)
    entry = json.loads(line)
    assert "CANARY" not in line
    assert entry["msg"] == "failed x"
    assert "RuntimeError" in entry["exc"] and "ValueError" in entry["exc"]
    assert "test_logs.py" in entry["exc"]
    assert safe_trace(record.exc_info).count("caused by") == 1


def test_filter_scrubs_foreign_formats() -> None:
    record = record_with_exception("CANARY-x")
    record.msg, record.args = "GET with snt_0123456789abcdef", ()
    assert RedactionFilter().filter(record)
    assert "snt_0123456789abcdef" not in record.msg and "CANARY" not in record.msg
    assert record.exc_info is None


def test_request_id_is_attached() -> None:
    from service.logs import request_id_var

    token = request_id_var.set("rid-42")
    try:
        rec = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", (), None)
        assert json.loads(RedactingJsonFormatter().format(rec))["request_id"] == "rid-42"
    finally:
        request_id_var.reset(token)


def test_access_line_names_the_request_but_never_its_query_string() -> None:
    """The lean access logger: address, method, path, status, bytes, time and the
    request id; the query string (which may carry identifiers) never."""
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config

    from service.config import Settings
    from service.serving import AccessLogger, gunicorn_options

    config = Config()
    settings = Settings(database_url="postgresql://x", vault_addr="http://x")
    for key, value in gunicorn_options(settings).items():
        if key in ("bind", "accesslog", "logger_class"):
            config.set(key, value)
    assert config.logger_class is AccessLogger
    logger = AccessLogger(config)
    lines: list[str] = []
    logger.access_log.handlers[:] = []
    logger.access_log.addFilter(lambda r: bool(lines.append(r.getMessage())))
    response = SimpleNamespace(
        status="200 OK", sent=512, headers=[("Content-Type", "x"), ("X-Request-Id", "rid-1")]
    )
    environ = {
        "REMOTE_ADDR": "10.0.0.7",
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/v1/patients",
        "QUERY_STRING": "identifier=MRN-SECRET-1",
    }
    logger.access(response, None, environ, timedelta(milliseconds=12))
    assert lines == ['10.0.0.7 "GET /v1/patients" 200 512 12ms rid=rid-1']


def test_the_quick_check_never_skips_a_line_a_pattern_would_change() -> None:
    """`redact` skips lines its one quick search finds nothing in: that search must
    match wherever any of the patterns would."""
    import random

    from service.logs import _PATTERNS

    pieces = [
        "snt_AbCdEf0123456789",
        "hvs.CAESIJ0123456789abcdefghij",
        "s.0123456789abcdefghijKLMN",
        "r.0123456789abcdefghijKLMN",
        "vault:v12:QUJDREVGR0hJ",
        "Authorization: Bearer x",
        "X-VAULT-TOKEN=abc",
        "SECRET_ID=1234",
        "Password=hunter2",
        "pa\u017f\u017fword=abc",  # long s: (?i)password matches it, str.lower() does not
        "AUTHOR\u0130ZATION: x",
        "plain words",
        "/v1/notes/0c6e3f1a-1b2c-4d5e-8f90-123456789abc",
        " ",
        "=",
        ".",
    ]
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
        full = text
        for pattern, replacement in _PATTERNS:
            full = pattern.sub(replacement, full)
        assert redact(text) == full, text

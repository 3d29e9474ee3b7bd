"""Responses, note plaintexts and log lines are JSON written by orjson: the same JSON
values as the json module wrote, and where orjson refuses (a lone surrogate, an integer
past 64 bits) the json module's answer, exactly as before."""

from __future__ import annotations

import enum
import json
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from service.http.jsonprovider import FastJSONProvider
from service.logs import RedactingJsonFormatter
from service.notes import sealing
from service.notes.sealing import NoteContent


@dataclass
class _Point:
    x: int


class _Kind(enum.StrEnum):
    PROGRESS = "progress"


class _Plain(enum.Enum):
    A = "a"


def _apps() -> tuple[Flask, Flask]:
    fast, plain = Flask("fast"), Flask("plain")
    fast.json = FastJSONProvider(fast)
    plain.json = DefaultJSONProvider(plain)
    for app in (fast, plain):
        app.json.sort_keys = False
    return fast, plain


VALUES = [
    {"id": "a1", "title": "Überweisung \u2013 Befund", "body": "x" * 3000 + '\n\t"é😀', "n": 3},
    {"when": datetime(2026, 12, 1, 16, 49, 31, tzinfo=UTC), "point": _Point(1)},
    {"big": 2**70, "neg": -(2**65)},
    {"lone": "a\ud800b"},
    [1.5, None, True, {"nested": ["z", "ä"]}],
]


@pytest.mark.parametrize(
    "value", VALUES, ids=["note", "flask-defaults", "bigint", "surrogate", "list"]
)
def test_a_response_carries_the_same_json_value_as_flask_wrote(value: object) -> None:
    fast, plain = _apps()
    with fast.app_context():
        ours = fast.json.response(value)
    with plain.app_context():
        theirs = plain.json.response(value)
    assert ours.mimetype == theirs.mimetype == "application/json"
    assert ours.get_data().endswith(b"\n")
    assert json.loads(ours.get_data()) == json.loads(theirs.get_data())


def test_flask_defaults_keep_their_spelling() -> None:
    # orjson would write the datetime as RFC 3339; Flask writes an HTTP date.
    fast, _ = _apps()
    with fast.app_context():
        body = json.loads(fast.json.response(VALUES[1]).get_data())
    assert body == {"when": "Tue, 01 Dec 2026 16:49:31 GMT", "point": {"x": 1}}


def test_what_orjson_refuses_is_escaped_as_before() -> None:
    fast, _ = _apps()
    with fast.app_context():
        raw = fast.json.response({"lone": "a\ud800b"}).get_data()
    assert raw == b'{"lone":"a\\ud800b"}\n'


def test_non_ascii_comes_as_utf8_and_key_order_is_kept() -> None:
    fast, _ = _apps()
    with fast.app_context():
        raw = fast.json.response({"z": "é", "a": 1}).get_data()
    assert raw == '{"z":"é","a":1}\n'.encode()


def test_sort_keys_and_debug_indentation_are_honoured() -> None:
    fast, _ = _apps()
    fast.json.sort_keys = True
    with fast.app_context():
        assert fast.json.response({"z": 1, "a": 2}).get_data() == b'{"a":2,"z":1}\n'
        fast.debug = True
        assert fast.json.response({"z": 1}).get_data() == b'{\n  "z": 1\n}\n'


def test_dumps_is_compact_utf8_and_json_module_options_use_the_json_module() -> None:
    fast, _ = _apps()
    assert fast.json.dumps({"a": "é", "b": [1, None]}) == '{"a":"é","b":[1,null]}'
    assert fast.json.dumps({"a": 1}, indent=1) == '{\n "a": 1\n}'


def test_other_types_as_flask_wrote_them() -> None:
    fast, plain = _apps()
    value = {
        "day": date(2026, 12, 1),
        "id": uuid.UUID(int=5),
        "amount": Decimal("1.50"),
        "kind": _Kind.PROGRESS,
    }
    with fast.app_context():
        ours = json.loads(fast.json.response(value).get_data())
    with plain.app_context():
        theirs = json.loads(plain.json.response(value).get_data())
    assert (
        ours
        == theirs
        == {
            "day": "Tue, 01 Dec 2026 00:00:00 GMT",
            "id": "00000000-0000-0000-0000-000000000005",
            "amount": "1.50",
            "kind": "progress",
        }
    )


def test_the_two_documented_differences() -> None:
    # Neither reaches a response of the service (no float field; enums are StrEnums).
    fast, _ = _apps()
    with fast.app_context():
        assert fast.json.response([math.nan, math.inf]).get_data() == b"[null,null]\n"
        assert fast.json.response([_Plain.A]).get_data() == b'["a"]\n'
    with pytest.raises(ValueError):  # the json module spelled NaN, which is not JSON
        json.dumps(math.nan, allow_nan=False)


def test_a_note_plaintext_round_trips_and_older_plaintexts_still_read() -> None:
    content = NoteContent(title="Befund \u2013 ä", body="line\n" * 500 + "😀")
    assert sealing.decode(sealing.encode(content)) == content
    # Versions sealed before: the json module's spelling (spaces, ensure_ascii=False).
    legacy = json.dumps({"t": content.title, "b": content.body}, ensure_ascii=False)
    assert sealing.decode(legacy.encode("utf-8")) == content
    assert sealing.decode(json.dumps({"t": None, "b": "x"}).encode()) == NoteContent(None, "x")


def test_a_plaintext_with_a_lone_surrogate_fails_as_before() -> None:
    # The schemas refuse such content (400); were one to slip through, sealing fails
    # loudly rather than storing something else.
    with pytest.raises(UnicodeEncodeError):
        sealing.encode(NoteContent(title=None, body="a\ud800"))


def test_log_lines_are_json_and_a_lone_surrogate_still_logs() -> None:
    formatter = RedactingJsonFormatter()

    def line(msg: str) -> dict[str, object]:
        record = logging.LogRecord("sealednotes", logging.INFO, __file__, 1, msg, (), None)
        out: dict[str, object] = json.loads(formatter.format(record))
        return out

    assert line("ready é")["msg"] == "ready é"
    assert line("odd \ud800 input")["msg"] == "odd \ud800 input"

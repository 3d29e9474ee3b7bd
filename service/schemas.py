"""Request validation (marshmallow). Unknown fields are rejected; sizes are bounded."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from service.errors import ValidationFailed

NOTE_KINDS = (
    "progress",
    "consult",
    "admission",
    "discharge",
    "procedure",
    "result",
    "referral",
    "other",
)
MAX_BODY_CHARS = 1024 * 1024
MAX_TITLE_CHARS = 500
MAX_EXTERNAL_ID_CHARS = 128


# Clinically plausible encounter times; also keeps every value representable
# after conversion to UTC.
EARLIEST_ENCOUNTER = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_ENCOUNTER = datetime(2200, 1, 1, tzinfo=UTC)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_control_characters(value: str) -> bool:
    return _CONTROL.search(value) is not None


class Text(fields.String):
    """A string PostgreSQL and UTF-8 can hold: no lone surrogates, no NUL or other
    control characters (tab, newline and carriage return are allowed in text)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        result = super()._deserialize(value, attr, data, **kwargs)
        try:
            result.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("Must be valid Unicode (no lone surrogates).") from None
        if _CONTROL.search(result):
            raise ValidationError("Must not contain control characters.")
        return result


class EncounterTime(fields.AwareDateTime):
    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        result = super()._deserialize(value, attr, data, **kwargs)
        try:
            in_range = EARLIEST_ENCOUNTER <= result <= LATEST_ENCOUNTER
        except OverflowError:
            in_range = False
        if not in_range:
            raise ValidationError("Must be between 1900-01-01 and 2200-01-01 (UTC).")
        return result


class StrictBoolean(fields.Boolean):
    """JSON true or false only: no 1, "yes" or "true"."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


def _external_id_not_blank(value: str) -> None:
    from service.patients.service import normalize_external_id

    if not normalize_external_id(value):
        raise ValidationError("Must not be blank.")


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class PatientCreate(StrictSchema):
    external_id = Text(
        required=True,
        validate=[validate.Length(min=1, max=MAX_EXTERNAL_ID_CHARS), _external_id_not_blank],
    )


class NoteWrite(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf(NOTE_KINDS))
    title = Text(load_default=None, allow_none=True, validate=validate.Length(max=MAX_TITLE_CHARS))
    body = Text(required=True, validate=validate.Length(min=1, max=MAX_BODY_CHARS))
    encounter_at = EncounterTime(load_default=None, allow_none=True)


class CareTeamPut(StrictSchema):
    until = EncounterTime(load_default=None, allow_none=True)


class BreakGlassCreate(StrictSchema):
    reason = Text(required=True, validate=validate.Length(min=20, max=2000))


class ShredRequest(StrictSchema):
    reason = Text(required=True, validate=validate.Length(min=10, max=2000))


class DecoyPut(StrictSchema):
    decoy = StrictBoolean(required=True)


class BudgetPut(StrictSchema):
    per_hour = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1, max=100000)
    )
    per_day = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1, max=1000000)
    )


_SCHEMAS: dict[type[Schema], Schema] = {}


def load(schema_class: type[Schema], data: Any) -> dict[str, Any]:
    """Validate a request body. One instance per schema (marshmallow 4 schemas keep no
    per-load state; building one copies every field: 35 us a request)."""
    schema = _SCHEMAS.get(schema_class)
    if schema is None:
        schema = _SCHEMAS.setdefault(schema_class, schema_class())
    if not isinstance(data, dict):
        raise ValidationFailed({"_schema": ["The body must be a JSON object"]})
    try:
        result: dict[str, Any] = schema.load(data)
    except ValidationError as e:
        # Messages name fields and rules; they never echo the submitted values.
        raise ValidationFailed(_strip_values(e.messages)) from None
    return result


def _strip_values(messages: Any) -> Any:
    if isinstance(messages, dict):
        return {str(k): _strip_values(v) for k, v in messages.items()}
    if isinstance(messages, list):
        return [_strip_values(m) for m in messages]
    return str(messages)

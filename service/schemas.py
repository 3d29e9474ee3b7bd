"""Request validation (marshmallow). Unknown fields are rejected; sizes are bounded."""

from __future__ import annotations

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


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class PatientCreate(StrictSchema):
    external_id = fields.String(
        required=True, validate=validate.Length(min=1, max=MAX_EXTERNAL_ID_CHARS)
    )


class NoteWrite(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf(NOTE_KINDS))
    title = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=MAX_TITLE_CHARS)
    )
    body = fields.String(required=True, validate=validate.Length(min=1, max=MAX_BODY_CHARS))
    encounter_at = fields.AwareDateTime(load_default=None, allow_none=True)


class CareTeamPut(StrictSchema):
    until = fields.AwareDateTime(load_default=None, allow_none=True)


class BreakGlassCreate(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=20, max=2000))


class DecoyPut(StrictSchema):
    decoy = fields.Boolean(required=True)


class BudgetPut(StrictSchema):
    per_hour = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=100000)
    )
    per_day = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=1000000)
    )


def load(schema: Schema, data: Any) -> dict[str, Any]:
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

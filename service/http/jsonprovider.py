"""Response JSON encoded by orjson, with the standard library's answer wherever orjson
would give another.

A note read answers the note's body (2 KB and up), and the json module escapes it
character by character: about 75,000 of the ~1.9 million instructions of a warm read
in process; orjson encodes it in a few thousand. The JSON *value* is the same; only
the spelling differs: non-ASCII characters come as UTF-8 instead of \\u escapes, which
the response's `application/json` (UTF-8) allows.

Exactly the same where it matters: dates, datetimes and dataclasses go to Flask's own
`default` (orjson would spell datetimes as RFC 3339; Flask sends HTTP dates); anything
orjson refuses (a lone surrogate, an integer past 64 bits, an unknown type) is encoded
by the standard library as before, escapes and errors alike. Requests are still parsed
by the standard library: orjson would read an integer past 64 bits as a float, so a
field's validation could see another value than the client sent.

Two differences remain, neither reachable from the service's responses (no float field,
enums are StrEnums, spelled alike): a NaN or infinite float comes as `null` (the json
module wrote `NaN`, which is not JSON), and a plain Enum member as its value (the json
module raised, a 500).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response as BaseResponse

# Types orjson would spell otherwise than Flask's `default`.
_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class FastJSONProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:  # options only the json module knows
            return super().dumps(obj, **kwargs)
        return self._encode(obj).decode("utf-8")

    def response(self, *args: Any, **kwargs: Any) -> BaseResponse:
        if self.compact is False or (self.compact is None and self._app.debug):
            return super().response(*args, **kwargs)  # indented, as Flask does in debug
        obj = self._prepare_response_obj(args, kwargs)
        return Response(self._encode(obj) + b"\n", mimetype=self.mimetype)

    def _encode(self, obj: Any) -> bytes:
        option = _PASSTHROUGH | (orjson.OPT_SORT_KEYS if self.sort_keys else 0)
        try:
            return orjson.dumps(obj, default=self.default, option=option)
        except (orjson.JSONEncodeError, TypeError):
            # What orjson refuses, the json module encodes as before (or refuses as
            # before): e.g. a lone surrogate, as a \\u escape.
            return json.dumps(
                obj, default=self.default, sort_keys=self.sort_keys, separators=(",", ":")
            ).encode("utf-8")

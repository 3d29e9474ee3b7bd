"""The contract checker of the contract tests: openapi.yaml (OpenAPI 3.1) loaded, and every
response checked against the operation it came from: status declared, media type declared, body
valid against the declared schema (JSON Schema 2020-12), declared headers present; errors are
RFC 9457 problems that echo their request id. `Checked` calls the API by spec path template and
checks every response. Used by tests/api/test_contract_*.py."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from flask import Flask
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

from tests.helpers import Api

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
SPEC_URI = "urn:sealednotes:openapi"
PROBLEM_JSON = "application/problem+json"
PROBLEM_FIELDS = ("type", "title", "status", "detail")
OPERATION_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})  # answered by Flask for every route
# EHR integration (/fhir/R4, /oauth2/token): its operations are exercised in test_contract_fhir.py.
EHR_PREFIXES = ("/fhir/", "/oauth2/")
EHR_PUBLIC = {"fhirCapabilities", "smartConfiguration", "oauth2Token"}
FHIR_VERSION_PARAM = ("int", "vid")  # /_history/{vid}: FHIR version ids are integers


# -- the document ----------------------------------------------------------------------------


@functools.cache
def spec_text() -> str:
    return SPEC_PATH.read_text(encoding="utf-8")


@functools.cache
def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(spec_text())
    return spec


def escape(part: str) -> str:
    """One JSON-pointer segment (RFC 6901)."""
    return part.replace("~", "~0").replace("/", "~1")


def pointer(*parts: str) -> str:
    return "".join("/" + escape(p) for p in parts)


RULE_PARAM_RE = re.compile(r"<(?:([^<>:]+):)?([^<>]+)>")


def openapi_path(rule: str) -> str:
    """Flask `/v1/notes/<uuid:note_id>` -> OpenAPI `/v1/notes/{note_id}`."""
    return RULE_PARAM_RE.sub(r"{\2}", rule)


@dataclass(frozen=True)
class Operation:
    method: str  # upper case
    path: str  # OpenAPI template
    spec: Mapping[str, Any] = field(compare=False, hash=False)

    @property
    def id(self) -> str:
        return str(self.spec["operationId"])

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{([^}]+)}", self.path)

    @property
    def has_body(self) -> bool:
        return "requestBody" in self.spec


def operations(spec: Mapping[str, Any]) -> list[Operation]:
    return [
        Operation(method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in OPERATION_METHODS
    ]


def flask_operations(app: Flask) -> set[tuple[str, str]]:
    return {
        (method, openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or set()) - IMPLICIT_METHODS
    }


def media_type(response: TestResponse) -> str:
    return response.mimetype.lower()


def is_json_media(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class Contract:
    """Checks responses against the operations of the spec (JSON Schema 2020-12)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        resource = Resource.from_contents(dict(spec), default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
        self.seen: set[tuple[str, str, int]] = set()

    # -- navigation ---------------------------------------------------------------------

    def at(self, ptr: str) -> Any:
        node: Any = self.spec
        for part in ptr.lstrip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def resolve(self, node: Mapping[str, Any], ptr: str) -> tuple[Mapping[str, Any], str]:
        """Follow OpenAPI `$ref`s (responses, headers, parameters) to the object and its pointer."""
        while "$ref" in node:
            ref = str(node["$ref"])
            assert ref.startswith("#/"), f"only local refs are used: {ref}"
            ptr = ref[1:]
            node = self.at(ptr)
        return node, ptr

    def operation(self, method: str, path: str) -> Mapping[str, Any]:
        item = self.spec["paths"].get(path)
        assert item is not None, f"{path} is not a path of the spec"
        op = item.get(method.lower())
        assert op is not None, f"{method} {path} is not an operation of the spec"
        return dict(op)

    def parameters(self, method: str, path: str) -> dict[tuple[str, str], Mapping[str, Any]]:
        """Path-level and operation-level parameters, by (in, name)."""
        item = self.spec["paths"][path]
        out: dict[tuple[str, str], Mapping[str, Any]] = {}
        for p in [*item.get("parameters", []), *self.operation(method, path).get("parameters", [])]:
            param, _ = self.resolve(p, "")
            out[(str(param["in"]), str(param["name"]))] = param
        return out

    # -- validation ---------------------------------------------------------------------

    def schema_errors(self, schema_pointer: str, instance: Any) -> list[str]:
        ref = {"$ref": f"{SPEC_URI}#{quote(schema_pointer, safe='/~')}"}
        validator = Draft202012Validator(
            ref, registry=self.registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        return [
            f"at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(instance)
        ]

    def check(self, method: str, path: str, response: TestResponse) -> Any:
        """Assert `response` is one the spec declares for `method path`; return its body."""
        op = self.operation(method, path)
        where = f"{method} {path} -> {response.status_code}"
        status = str(response.status_code)
        declared = op["responses"]
        assert status in declared, (
            f"{where}: status not declared (declared: {sorted(declared)}); "
            f"body: {response.get_data(as_text=True)[:500]}"
        )
        body = self.check_response(
            declared[status],
            pointer("paths", path, method.lower(), "responses", status),
            response,
            where,
        )
        self.seen.add((method, path, response.status_code))
        return body

    def check_component(self, name: str, response: TestResponse) -> Any:
        """For answers no operation can declare: unknown paths, undocumented methods."""
        ptr = pointer("components", "responses", name)
        return self.check_response(self.at(ptr), ptr, response, f"component {name}")

    def check_response(
        self, node: Mapping[str, Any], ptr: str, response: TestResponse, where: str
    ) -> Any:
        declared, ptr = self.resolve(node, ptr)
        assert response.headers.get("X-Request-Id"), f"{where}: no X-Request-Id"
        assert response.headers.get("Cache-Control") == "no-store", f"{where}: cacheable"
        self.check_headers(declared, ptr, response, where)
        content = declared.get("content")
        raw = response.get_data(as_text=True)
        if not content:
            assert raw == "", f"{where}: the spec declares no body, got {raw[:200]!r}"
            return None
        media = media_type(response)
        assert media in content, f"{where}: media type {media!r} not in {sorted(content)}"
        body: Any = json.loads(raw) if is_json_media(media) else raw
        # A YAML document is checked as the data it describes; the text is returned.
        checked = yaml.safe_load(raw) if media == "application/yaml" else body
        errors = self.schema_errors(f"{ptr}/content/{escape(media)}/schema", checked)
        assert not errors, f"{where}: body does not match the spec: {errors}; body: {raw[:500]}"
        if media == PROBLEM_JSON:
            assert_problem(response, body)
        return body

    def check_headers(
        self, declared: Mapping[str, Any], ptr: str, response: TestResponse, where: str
    ) -> None:
        for name, header in declared.get("headers", {}).items():
            header, hptr = self.resolve(header, f"{ptr}/headers/{escape(name)}")
            value = response.headers.get(name)
            if value is None:
                assert not header.get("required"), f"{where}: required header {name} missing"
                continue
            schema, sptr = self.resolve(header["schema"], f"{hptr}/schema")
            instance: Any = value
            if schema.get("type") == "integer":
                assert re.fullmatch(r"[0-9]+", value), f"{where}: {name}={value!r} not an integer"
                instance = int(value)
            errors = self.schema_errors(sptr, instance)
            assert not errors, f"{where}: header {name}={value!r}: {errors}"


def assert_problem(response: TestResponse, body: Any) -> dict[str, Any]:
    """RFC 9457 basics every error of this service must satisfy."""
    assert media_type(response) == PROBLEM_JSON, response.headers.get("Content-Type")
    assert isinstance(body, dict), body
    missing = [f for f in PROBLEM_FIELDS if f not in body]
    assert not missing, f"problem without {missing}: {body}"
    assert body["status"] == response.status_code, body
    assert str(body["type"]).startswith("https://sealednotes.dev/problems/"), body
    assert body.get("request_id") == response.headers.get("X-Request-Id"), body
    return body


def problem_type(body: Mapping[str, Any]) -> str:
    return str(body["type"]).rsplit("/", 1)[-1]


# -- a client that checks every response ---------------------------------------------------


class Checked:
    """Calls the API by spec path template and checks every response against the spec."""

    def __init__(self, api: Api, contract: Contract) -> None:
        self.api = api
        self.contract = contract

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        expect: int | None = None,
        params: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        json: Any = None,
        **kw: Any,
    ) -> tuple[TestResponse, Any]:
        url = path.format(**(params or {}))
        r = self.api.call(method, url, token, json=json, query_string=query, **kw)
        body = self.contract.check(method, path, r)
        if expect is not None:
            assert r.status_code == expect, f"{method} {url}: {r.status_code} {body}"
        return r, body

    def problem(
        self, method: str, path: str, token: str | None, expect: int, slug: str, **kw: Any
    ) -> dict[str, Any]:
        """A call that must fail with problem type `slug`."""
        _r, body = self.call(method, path, token, expect=expect, **kw)
        assert problem_type(body) == slug, body
        return dict(body)

"""Check a real HTTP answer against the OpenAPI document: status documented, body and headers
valid."""

from __future__ import annotations

import json
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

ROOT = "urn:openapi"


def pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


class SchemaCheck:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.registry = Registry().with_resource(ROOT, DRAFT202012.create_resource(spec))

    def validator(self, *parts: str) -> Draft202012Validator:
        """A validator for the schema at `parts`; its `#/components/…` refs resolve in the spec."""
        return Draft202012Validator({"$ref": ROOT + "#" + pointer(*parts)}, registry=self.registry)

    def assert_conforms(self, response: httpx.Response) -> None:
        path, method = response.request.url.path, response.request.method.lower()
        operation = self.spec["paths"][path][method]
        status = str(response.status_code)
        assert status in operation["responses"], f"{method} {path}: {status} is not documented"
        documented = operation["responses"][status]
        assert "x-request-id" in response.headers and "X-Request-ID" in documented["headers"]
        for name in set(documented["headers"]) - {"X-Request-ID"}:
            if name.lower() in response.headers:
                header = self.spec["components"]["headers"][name]
                Draft202012Validator(header["schema"]).validate(
                    int(response.headers[name])
                    if header["schema"]["type"] == "integer"
                    else response.headers[name]
                )
        media = response.headers["content-type"].split(";")[0]
        assert media in documented["content"], f"{method} {path} {status}: {media} not documented"
        at = ("paths", path, method, "responses", status, "content", media, "schema")
        validator = self.validator(*at)
        if method == "head":
            assert not response.content
        elif media == "application/x-ndjson":
            for line in response.text.splitlines():
                validator.validate(json.loads(line))
        elif media.endswith("json"):
            validator.validate(response.json())
        else:
            validator.validate(response.text)

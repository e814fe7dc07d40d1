"""The OpenAPI schema, with ``POST /allocate`` added (it is served outside FastAPI's router)."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from keygen.api.allocate import ALLOCATE_PATH
from keygen.api.responses import ErrorResponse
from keygen.api.schemas import AllocateRequest
from keygen.ranges import AllocatedRange

REF_TEMPLATE = "#/components/schemas/{name}"
#: API keys (keygen/auth.py): optional in the schema, since KEYGEN_AUTH may not require them.
BEARER = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key made by `keygen keys create`, as `Authorization: Bearer "
        "<token>`; required once the ledger holds a key (KEYGEN_AUTH=auto) or always "
        "(KEYGEN_AUTH=required). /health/live and /health/ready never need one.",
    }
}
#: Every operation may carry a key or, when keys are not required, none.
KEY_OR_NONE: list[dict[str, list[str]]] = [{"bearer": []}, {}]
OPEN_OPERATIONS = ("/health/live", "/health/ready")

_ERRORS = {
    "400": "Malformed JSON, invalid HTTP, or a Host not in KEYGEN_ALLOWED_HOSTS",
    "401": "Keys are required and the request has none, or an unknown or revoked one",
    "403": "The key has no allocate:<glob> scope matching the namespace",
    "405": "Method not allowed",
    "408": "The body did not arrive within KEYGEN_BODY_TIMEOUT; the connection is closed",
    "409": "The namespace has too few IDs left below 2**63-1",
    "413": "Body too large",
    "415": "Content-Type is not application/json (required even without a body)",
    "429": "Over a rate limit of the key or the namespace; see Retry-After and RateLimit-*",
    "431": "The request line and headers are over KEYGEN_MAX_HEADER_BYTES",
    "422": "Invalid field: size out of range, bad namespace, unknown field",
    "503": "No layer could allocate in time; see the Retry-After header",
}


def _ref(model: type) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(name=model.__name__)}


def install_openapi(api: FastAPI) -> None:
    """Make ``api.openapi()`` document ``POST /allocate`` too."""

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        schema = get_openapi(
            title=api.title,
            version=api.version,
            description=api.description,
            routes=api.routes,
        )
        schema["components"] = schema.get("components", {})
        schema["components"]["securitySchemes"] = BEARER
        schema["security"] = KEY_OR_NONE
        for path in OPEN_OPERATIONS:
            for operation in schema["paths"].get(path, {}).values():
                operation["security"] = []
        components = schema["components"].setdefault("schemas", {})
        request = AllocateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        settings = getattr(api.state, "settings", None)
        if settings is not None:
            size = request["properties"]["size"]
            for choice in size.get("anyOf", [size]):
                if choice.get("type") == "integer":
                    choice["maximum"] = settings.max_block_size
        components[AllocateRequest.__name__] = request
        _, written = msgspec.json.schema_components(
            [AllocatedRange, ErrorResponse], ref_template=REF_TEMPLATE
        )
        components.update(written)
        json_body = {"application/json": {"schema": _ref(ErrorResponse)}}
        schema["paths"][ALLOCATE_PATH] = {
            "post": {
                "summary": "Allocate a range of unique IDs",
                "operationId": "allocate",
                "description": "Needs `Content-Type: application/json` (or a `+json` type), "
                "even without a body; an empty body means `{}`. JSON with a key twice is "
                "taken as the last one says (RFC 8259 leaves it to the reader).",
                # Required here because its Content-Type is: an empty body with it is `{}`.
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(AllocateRequest)}},
                },
                "responses": {
                    "200": {
                        "description": "The range, yours alone",
                        "content": {"application/json": {"schema": _ref(AllocatedRange)}},
                    },
                    **{
                        status: {"description": text, "content": json_body}
                        for status, text in _ERRORS.items()
                    },
                },
            }
        }
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]

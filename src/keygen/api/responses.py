"""The one JSON error shape, ``{"error": {"code", "message"}}``, for every failure."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from starlette.responses import Response

from keygen.errors import ServiceError

_encoder = msgspec.json.Encoder()


def error_body(code: str, message: str) -> bytes:
    body: bytes = _encoder.encode({"error": {"code": code, "message": message}})
    return body


def json_error(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        error_body(code, message), status_code, headers=headers, media_type="application/json"
    )


def error_response(exc: ServiceError) -> Response:
    return json_error(exc.status_code, exc.code, exc.message, exc.headers())

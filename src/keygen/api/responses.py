"""The one JSON error shape, ``{"error": {"code", "message"}}``, for every failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec
from starlette.responses import Response

from keygen.errors import ServiceError

_encoder = msgspec.json.Encoder()


class ErrorDetail(msgspec.Struct, frozen=True):
    code: Annotated[str, msgspec.Meta(description="What went wrong, for programs.")]
    message: Annotated[str, msgspec.Meta(description="What went wrong, for people.")]


class ErrorResponse(msgspec.Struct, frozen=True):
    """The body of every error response."""

    error: ErrorDetail


def error_body(code: str, message: str) -> bytes:
    return _encoder.encode(ErrorResponse(ErrorDetail(code, message)))


def json_error(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        error_body(code, message), status_code, headers=headers, media_type="application/json"
    )


def error_response(exc: ServiceError) -> Response:
    return json_error(exc.status_code, exc.code, exc.message, exc.headers())

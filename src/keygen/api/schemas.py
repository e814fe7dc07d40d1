"""Pydantic models of the HTTP contract, used to document it in the OpenAPI schema.

``POST /allocate`` is validated by msgspec on the hot path (``allocate.py``); these models
describe the same shapes for ``/docs``, and a test keeps the two in agreement.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from keygen.constants import DEFAULT_NAMESPACE, NAMESPACE_PATTERN


class AllocateRequest(BaseModel):
    size: int | None = Field(
        None, ge=1, description="How many IDs; defaults to ID_BLOCK_SIZE. At most "
        "KEYGEN_MAX_BLOCK_SIZE.",
    )
    namespace: str | None = Field(
        None, pattern=NAMESPACE_PATTERN.pattern,
        description=f"An independent ID sequence, created on first use; defaults to "
        f"{DEFAULT_NAMESPACE!r}.",
    )


class Allocation(BaseModel):
    start: int = Field(description="First ID of the range.")
    end: int = Field(description="Last ID of the range (inclusive): end - start + 1 == size.")
    size: int
    namespace: str
    source: Literal["redis_sentinel", "postgresql", "emergency_reserve", "sqlite"] = Field(
        description="The layer that served the request."
    )
    timestamp: float = Field(description="Unix time the range was handed out.")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail

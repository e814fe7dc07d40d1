"""The request of ``POST /allocate`` as the OpenAPI schema documents it.

The hot path decodes it with msgspec (``allocate.py``) and checks the bounds itself, with
messages of its own; this model states the same rules for ``/docs``, and a test keeps the two
in agreement. The response and error shapes are documented from the msgspec structs the
service writes (``AllocatedRange``, ``ErrorResponse``).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from keygen.constants import DEFAULT_NAMESPACE, NAMESPACE_PATTERN


class AllocateRequest(BaseModel):
    size: int | None = Field(
        None,
        ge=1,
        description="How many IDs; defaults to ID_BLOCK_SIZE. At most KEYGEN_MAX_BLOCK_SIZE.",
    )
    namespace: str | None = Field(
        None,
        pattern=NAMESPACE_PATTERN.pattern,
        description=f"An independent ID sequence, created on first use; defaults to "
        f"{DEFAULT_NAMESPACE!r}.",
    )

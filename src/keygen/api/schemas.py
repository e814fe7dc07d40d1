"""The request of ``POST /allocate`` as the OpenAPI schema documents it.

The hot path decodes it with msgspec (``allocate.py``) and checks the bounds itself, with
messages of its own; this model states the same rules for ``/docs``, and a test keeps the two
in agreement. The response and error shapes are documented from the msgspec structs the
service writes (``AllocatedRange``, ``ErrorResponse``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from keygen.constants import DEFAULT_NAMESPACE, NAMESPACE_PATTERN


class AllocateRequest(BaseModel):
    # Unknown fields are refused by the server, so the schema says so; install_openapi()
    # adds size's maximum, which is a setting (KEYGEN_MAX_BLOCK_SIZE).
    model_config = ConfigDict(extra="forbid")

    size: int | None = Field(
        None,
        ge=1,
        description="How many IDs; defaults to ID_BLOCK_SIZE. At most KEYGEN_MAX_BLOCK_SIZE. "
        "An integral number such as 1.0 is an integer too.",
    )
    namespace: str | None = Field(
        None,
        pattern=NAMESPACE_PATTERN.pattern,
        description=f"An independent ID sequence, created on first use; defaults to "
        f"{DEFAULT_NAMESPACE!r}.",
    )

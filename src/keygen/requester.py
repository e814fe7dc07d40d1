"""Who a request is from, for the audit trail: the API key behind the request being served.

Set by ``POST /allocate`` for each request made with a key (its own task, so its own
context), read by the ledger when it records a grant. A grant made for a coalesced batch
names every key of the batch; a lease grant names the key whose request caused it (the
ranges later carved from the lease are counted per key in the usage table).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final

#: ``<key id> (<key name>)``, several joined by ``, ``; empty without a key.
REQUESTED_BY: Final[ContextVar[str]] = ContextVar("keygen_requested_by", default="")

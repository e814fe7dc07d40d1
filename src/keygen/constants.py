"""Names and limits shared by every layer."""

from __future__ import annotations

import re
from typing import Final

#: IDs are positive signed 64-bit integers: every database and language can store them.
MIN_ID: Final = 1
MAX_ID: Final = 2**63 - 1

DEFAULT_NAMESPACE: Final = "default"
NAMESPACE_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

# The `source` a response reports: which layer served it.
SOURCE_REDIS: Final = "redis_sentinel"
SOURCE_POSTGRESQL: Final = "postgresql"
SOURCE_RESERVE: Final = "emergency_reserve"
SOURCE_SQLITE: Final = "sqlite"

# The `kind` of a grant in the ledger's audit trail.
GRANT_LEASE: Final = "lease"
GRANT_DIRECT: Final = "direct"
GRANT_RESERVE: Final = "reserve"

# Redis's layout: a hash per namespace holds the namespace's lease, a string its refill lock.
# (The fields' meanings, and the functions that read and write them: redis_functions.py.)
REDIS_LEASE_KEY: Final = "keygen:lease:{}"
REDIS_LOCK_KEY: Final = "keygen:refill-lock:{}"
LEASE_BASE: Final = "base"  # first ID of the lease, as a decimal string
LEASE_LENGTH: Final = "length"  # IDs in the lease
LEASE_USED: Final = "used"  # IDs of the lease handed out so far

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8010

"""Every error Keygen raises, under one base.

The service's errors carry the HTTP status and code they are reported with; the tools'
errors (the local cluster, backup and restore, schema migrations) are reported by the
command line as a message and an exit status, and have no HTTP status.

    KeygenError                      base: a message and a code
    ├── ServiceError                 500 internal_error: what the service reports over HTTP
    │   ├── RequestError             4xx: the client's request is at fault; nothing is allocated
    │   │   ├── ClientDisconnected   400 client_disconnected: the body never fully arrived
    │   │   │                            (nothing can be answered; counted, not sent)
    │   │   ├── BadTarget            400 bad_target: CONNECT, or a request target that is no
    │   │   │                            path on this service (the edge)
    │   │   ├── BadHeader            400 bad_header: Host missing, repeated or malformed, a
    │   │   │                            repeated Authorization, a transfer coding refused
    │   │   ├── HostNotAllowed       400 host_not_allowed: Host not in KEYGEN_ALLOWED_HOSTS
    │   │   ├── MalformedJSON        400 malformed_json
    │   │   ├── Unauthorized         401 unauthorized: no API key, or one that is unknown or
    │   │   │                            revoked (KEYGEN_AUTH)
    │   │   ├── Forbidden            403 forbidden: the API key lacks the scope the request needs
    │   │   ├── NotFound             404 not_found
    │   │   ├── MethodNotAllowed     405 method_not_allowed
    │   │   ├── RequestTimeout       408 request_timeout: the head or the body did not arrive
    │   │   │                            in time (the edge)
    │   │   ├── NamespaceExhausted   409 namespace_exhausted
    │   │   ├── TooManyNamespaces    409 too_many_namespaces: the ledger holds
    │   │   │                            KEYGEN_MAX_NAMESPACES already
    │   │   ├── PayloadTooLarge      413 payload_too_large
    │   │   ├── UnsupportedMediaType 415 unsupported_media_type
    │   │   ├── InvalidRequest       422 invalid_request
    │   │   ├── TooManyPipelined     429 too_many_pipelined: more requests waiting on one
    │   │   │                            connection than KEYGEN_MAX_PIPELINE (not answered)
    │   │   └── HeadersTooLarge      431 headers_too_large: over KEYGEN_MAX_HEADER_BYTES
    │   ├── LayerUnavailable         503 layer_unavailable: one layer failed; the allocator
    │   │   │                            falls back to the next one
    │   │   ├── LedgerUnavailable    503 ledger_unavailable
    │   │   └── ReserveUnavailable   503 reserve_unavailable: no emergency reserve to serve from
    │   │       └── ReserveExhausted 503 reserve_exhausted: the emergency reserve is used up
    │   ├── TooManyConnections       503 too_many_connections: KEYGEN_MAX_CONNECTIONS reached,
    │   │                                none idle to close
    │   ├── ServiceUnavailable       503 service_unavailable: no layer could serve in time (with
    │   │   │                            the reserve's code when the reserve refused last)
    │   │   └── KeysUnavailable      503 keys_unavailable: keys are required, and the table of
    │   │                                keys could not be read from the ledger yet
    │   └── JournalLocked            500 journal_locked: start-up refused, every reserve journal
    │                                    of the data dir is locked by another process
    └── ToolError                    tool_error: a command-line tool failed
        ├── ClusterError             cluster_error: the local topology could not be started,
        │                                inspected or stopped
        ├── BackupError              backup_error: a backup or restore was refused or failed
        ├── ChaosError               chaos_error: a chaos run was refused (a plan with no fault)
        └── MigrationError           migration_error: the ledger's schema cannot be migrated
            └── SchemaTooNew         schema_too_new: a newer Keygen migrated the ledger

Backends translate their driver's exceptions into these at the edge (``raise ... from exc``),
so the allocator and the HTTP layer never see a driver exception.
"""

from __future__ import annotations

__all__ = [
    "BackupError",
    "BadHeader",
    "BadTarget",
    "ChaosError",
    "ClientDisconnected",
    "ClusterError",
    "Forbidden",
    "HeadersTooLarge",
    "HostNotAllowed",
    "InvalidRequest",
    "JournalLocked",
    "KeygenError",
    "KeysUnavailable",
    "LayerUnavailable",
    "LedgerUnavailable",
    "MalformedJSON",
    "MethodNotAllowed",
    "MigrationError",
    "NamespaceExhausted",
    "NotFound",
    "PayloadTooLarge",
    "RequestError",
    "RequestTimeout",
    "ReserveExhausted",
    "ReserveUnavailable",
    "SchemaTooNew",
    "ServiceError",
    "ServiceUnavailable",
    "TooManyConnections",
    "TooManyNamespaces",
    "TooManyPipelined",
    "ToolError",
    "Unauthorized",
    "UnsupportedMediaType",
]


class KeygenError(Exception):
    """Base of all Keygen errors."""

    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServiceError(KeygenError):
    """An error the service reports over HTTP, with its status and code."""

    status_code: int = 500

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers the error response carries."""
        return {}


class RequestError(ServiceError):
    """The request is at fault; it allocated nothing."""

    status_code = 400
    code = "bad_request"


class ClientDisconnected(RequestError):
    """The client hung up before its whole body arrived (or the HTTP parser gave up on it):
    nothing is allocated, and nothing can be answered."""

    status_code = 400
    code = "client_disconnected"


class BadTarget(RequestError):
    """The request line asks for no path of this service: CONNECT (a tunnel), an asterisk,
    a target that does not parse, one with userinfo, or one naming another host than
    ``Host`` (the edge, ``api/protocol.py``); the connection is closed."""

    status_code = 400
    code = "bad_target"


class BadHeader(RequestError):
    """A header RFC 9110 or 9112 makes the request invalid with: ``Host`` missing (HTTP/1.1),
    given twice or not a host, ``Authorization`` given twice, a transfer coding the service
    does not take (the edge, ``api/protocol.py``); the connection is closed."""

    status_code = 400
    code = "bad_header"


class HostNotAllowed(RequestError):
    """The request's ``Host`` is not one of ``KEYGEN_ALLOWED_HOSTS``."""

    status_code = 400
    code = "host_not_allowed"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class MalformedJSON(RequestError):
    status_code = 400
    code = "malformed_json"


class Unauthorized(RequestError):
    """The request carries no API key (``Authorization: Bearer <token>``), or one that is
    unknown or revoked, and the service requires one."""

    status_code = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="keygen"'}


class Forbidden(RequestError):
    """The API key is valid but has no scope for this request (the path or the namespace)."""

    status_code = 403
    code = "forbidden"


class RateLimited(RequestError):
    """Over a rate limit or quota of the API key or the namespace (``keygen/quotas.py``):
    nothing allocated; ``Retry-After`` says when the limit lets a request through again."""

    status_code = 429
    code = "rate_limited"

    def __init__(
        self, message: str, *, policy: str, limit: int, remaining: int, reset: int, window: int
    ) -> None:
        super().__init__(message)
        self.policy, self.limit, self.remaining = policy, limit, remaining
        self.reset, self.window = max(1, reset), window

    def headers(self) -> dict[str, str]:
        # Both generations of the IETF RateLimit fields: the three numbers most clients read,
        # and the structured RateLimit-Policy / RateLimit pair of the current draft.
        return {
            "Retry-After": str(self.reset),
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": f'"{self.policy}";q={self.limit};w={self.window}',
            "RateLimit": f'"{self.policy}";r={self.remaining};t={self.reset}',
        }


class NotFound(RequestError):
    status_code = 404
    code = "not_found"


class MethodNotAllowed(RequestError):
    status_code = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class NamespaceExhausted(RequestError):
    """The namespace has fewer IDs left below 2**63 - 1 than the request asks for."""

    status_code = 409
    code = "namespace_exhausted"

    def __init__(self, namespace: str, requested: int, remaining: int) -> None:
        super().__init__(
            f"namespace {namespace!r} has {remaining} IDs left below 2**63-1; "
            f"{requested} were asked for"
        )
        self.namespace = namespace
        self.requested = requested
        self.remaining = remaining


class TooManyNamespaces(RequestError):
    """The request names a new namespace, and the ledger already holds as many as it may."""

    status_code = 409
    code = "too_many_namespaces"

    def __init__(self, namespace: str, limit: int) -> None:
        super().__init__(
            f"namespace {namespace!r} does not exist and cannot be created: the ledger already "
            f"holds {limit} namespaces (KEYGEN_MAX_NAMESPACES)"
        )
        self.namespace = namespace
        self.limit = limit


class RequestTimeout(RequestError):
    """The request's head or body did not arrive in time (``api/protocol.py``); the
    connection is closed."""

    status_code = 408
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class PayloadTooLarge(RequestError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    status_code = 415
    code = "unsupported_media_type"


class TooManyPipelined(RequestError):
    """More requests are waiting on one connection than ``KEYGEN_MAX_PIPELINE``: it is closed
    unanswered (the edge, ``api/protocol.py``)."""

    status_code = 429
    code = "too_many_pipelined"


class HeadersTooLarge(RequestError):
    """The request line and headers are over ``KEYGEN_MAX_HEADER_BYTES`` (the edge)."""

    status_code = 431
    code = "headers_too_large"


class TooManyConnections(ServiceError):
    """``KEYGEN_MAX_CONNECTIONS`` are open and none is idle to close (the edge)."""

    status_code = 503
    code = "too_many_connections"


class InvalidRequest(RequestError):
    status_code = 422
    code = "invalid_request"


class LayerUnavailable(ServiceError):
    """One layer (dispenser or ledger) could not serve; the next layer is tried."""

    status_code = 503
    code = "layer_unavailable"


class LedgerUnavailable(LayerUnavailable):
    code = "ledger_unavailable"


class ReserveUnavailable(LayerUnavailable):
    """The emergency reserve cannot serve: none is held yet, or its journal cannot be written."""

    code = "reserve_unavailable"


class ReserveExhausted(ReserveUnavailable):
    """The emergency reserve has fewer IDs left than the request asks for."""

    code = "reserve_exhausted"


class ServiceUnavailable(ServiceError):
    """No layer could allocate within the time budget."""

    status_code = 503
    code = "service_unavailable"

    def __init__(self, message: str, retry_after: int = 1, *, code: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        if code is not None:
            self.code = code  # e.g. reserve_exhausted: say why the last resort refused too

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class KeysUnavailable(ServiceUnavailable):
    """Keys are required, and this worker has not read the table of keys from the ledger yet
    (it was unreachable at start-up): nothing is served that needs a key until it has."""

    code = "keys_unavailable"


class JournalLocked(ServiceError):
    """Every reserve journal slot of the data dir is locked by another running process."""

    code = "journal_locked"


class ToolError(KeygenError):
    """A command-line tool failed; the command prints the message and exits non-zero."""

    code = "tool_error"


class ClusterError(ToolError):
    """The local topology could not be started, inspected or stopped."""

    code = "cluster_error"


class BackupError(ToolError):
    """A backup or restore could not be made, or was refused; the message says why."""

    code = "backup_error"


class ChaosError(ToolError):
    """A chaos run was refused: it would prove nothing (no fault planned)."""

    code = "chaos_error"


class MigrationError(ToolError):
    """The ledger's schema cannot be migrated by this Keygen."""

    code = "migration_error"


class SchemaTooNew(MigrationError):
    """The database was migrated by a newer Keygen; this one must not write to it.

    The ledger translates it into ``LedgerUnavailable`` when the service meets it.
    """

    code = "schema_too_new"

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the ledger's schema is at version {found}, newer than this Keygen knows "
            f"({known}); upgrade Keygen"
        )
        self.found = found
        self.known = known

"""The HTTP layer: it knows the service, and through it only the allocator."""

from keygen.api.app import create_app

__all__ = ["create_app"]

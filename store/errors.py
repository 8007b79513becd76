"""Exceptions of the store service, each mapped to one gRPC status code by the server."""

from __future__ import annotations

from store._native import StoreError


class NotFoundError(StoreError):
    """A table or checkpoint that does not exist (NOT_FOUND)."""


class AlreadyExistsError(StoreError):
    """A table that already exists (ALREADY_EXISTS)."""


class InvalidArgumentError(StoreError, ValueError):
    """A malformed request (INVALID_ARGUMENT)."""


class ResourceExhaustedError(StoreError):
    """A request larger than the server accepts (RESOURCE_EXHAUSTED)."""


class FailedPreconditionError(StoreError):
    """A request that cannot apply to the current state (FAILED_PRECONDITION)."""

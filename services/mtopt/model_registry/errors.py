"""Errors of the registry's domain code; the servicer maps each to its gRPC status.

Every one carries ``status`` (a grpc.StatusCode name) and ``reason`` (the label of
``mtopt_model_registry_rejected_total``), and a message that says what to do.
"""

from __future__ import annotations

from mtopt.episode_store.storage import StorageUnavailableError

__all__ = [
    "ConflictError", "InvalidRequestError", "NotFoundError", "OutOfRangeError", "PreconditionError",
    "RegistryError", "StorageUnavailableError", "TooLargeError",
]


class RegistryError(Exception):
    """A call refused for bad input or state; nothing was stored."""

    status = "INVALID_ARGUMENT"

    def __init__(self, message: str, reason: str = "invalid_request"):
        super().__init__(message)
        self.message, self.reason = message, reason


class InvalidRequestError(RegistryError):
    status = "INVALID_ARGUMENT"


class NotFoundError(RegistryError):
    status = "NOT_FOUND"

    def __init__(self, message: str, reason: str = "not_found"):
        super().__init__(message, reason)


class TooLargeError(RegistryError):
    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, reason: str = "too_large"):
        super().__init__(message, reason)


class ConflictError(RegistryError):
    status = "ALREADY_EXISTS"

    def __init__(self, message: str, reason: str = "conflict"):
        super().__init__(message, reason)


class PreconditionError(RegistryError):
    status = "FAILED_PRECONDITION"

    def __init__(self, message: str, reason: str = "failed_precondition"):
        super().__init__(message, reason)


class OutOfRangeError(RegistryError):
    status = "OUT_OF_RANGE"

    def __init__(self, message: str, reason: str = "out_of_range"):
        super().__init__(message, reason)

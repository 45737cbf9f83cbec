"""Errors of the services' domain code, each with the gRPC status a servicer answers it with.

Every one carries ``status`` (a grpc.StatusCode name), ``reason`` (the label of the service's
``mtopt_<service>_rejected_total``; each class has a default) and a message that says what to
do. A servicer catches `ServiceError` and aborts with ``grpc.StatusCode[e.status]``.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A call refused for bad input or state; nothing was stored."""

    status = "INVALID_ARGUMENT"
    default_reason = "invalid_request"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.reason = self.default_reason if reason is None else reason


class InvalidRequestError(ServiceError):
    status, default_reason = "INVALID_ARGUMENT", "invalid_request"


class NotFoundError(ServiceError):
    status, default_reason = "NOT_FOUND", "not_found"


class TooLargeError(ServiceError):
    status, default_reason = "RESOURCE_EXHAUSTED", "too_large"


class ConflictError(ServiceError):
    status, default_reason = "ALREADY_EXISTS", "conflict"


class PreconditionError(ServiceError):
    status, default_reason = "FAILED_PRECONDITION", "failed_precondition"


class OutOfRangeError(ServiceError):
    status, default_reason = "OUT_OF_RANGE", "out_of_range"


class UnavailableError(ServiceError):
    """A dependency did not answer; the caller may retry."""

    status, default_reason = "UNAVAILABLE", "unavailable"

"""Errors of success_detector's domain code; the servicer maps each to its gRPC status.

Each carries ``status`` (a grpc.StatusCode name), ``reason`` (the label of
``mtopt_success_detector_rejected_total``) and a message that says what to do.
"""

from __future__ import annotations


class SdError(Exception):
    """A call refused for bad input or state; nothing was stored."""

    status = "INVALID_ARGUMENT"

    def __init__(self, message: str, reason: str = "invalid_request"):
        super().__init__(message)
        self.message, self.reason = message, reason


class InvalidRequest(SdError):
    status = "INVALID_ARGUMENT"


class NotFound(SdError):
    status = "NOT_FOUND"

    def __init__(self, message: str, reason: str = "unknown_version"):
        super().__init__(message, reason)


class Precondition(SdError):
    status = "FAILED_PRECONDITION"


class TooMany(SdError):
    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, reason: str = "too_large"):
        super().__init__(message, reason)


class Unavailable(SdError):
    """A dependency (registry or storage) did not answer; the caller may retry."""

    status = "UNAVAILABLE"

    def __init__(self, message: str, reason: str = "unavailable"):
        super().__init__(message, reason)

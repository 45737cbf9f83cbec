"""Errors of success_detector's domain code (the shared `mtopt.serving.errors`, with this
service's default reasons); the servicer maps each to its gRPC status, and ``reason`` labels
``mtopt_success_detector_rejected_total``."""

from __future__ import annotations

from mtopt.serving.errors import InvalidRequestError as InvalidRequest
from mtopt.serving.errors import NotFoundError, PreconditionError
from mtopt.serving.errors import ServiceError as SdError
from mtopt.serving.errors import TooLargeError as TooMany
from mtopt.serving.errors import UnavailableError as Unavailable

__all__ = ["InvalidRequest", "NotFound", "Precondition", "SdError", "TooMany", "Unavailable"]


class NotFound(NotFoundError):
    default_reason = "unknown_version"


class Precondition(PreconditionError):
    default_reason = "invalid_request"

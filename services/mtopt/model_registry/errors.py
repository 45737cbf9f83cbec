"""Errors of the registry's domain code (the shared `mtopt.serving.errors`); the servicer maps
each to its gRPC status, and ``reason`` labels ``mtopt_model_registry_rejected_total``."""

from __future__ import annotations

from mtopt.episode_store.storage import StorageUnavailableError
from mtopt.serving.errors import (
    ConflictError, InvalidRequestError, NotFoundError, OutOfRangeError, PreconditionError, TooLargeError,
)
from mtopt.serving.errors import ServiceError as RegistryError

__all__ = [
    "ConflictError", "InvalidRequestError", "NotFoundError", "OutOfRangeError", "PreconditionError",
    "RegistryError", "StorageUnavailableError", "TooLargeError",
]

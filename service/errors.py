"""Errors the service raises for its callers: each carries the HTTP status the API answers with.

The message is for the user and says what to change; the API sends it as ``{"detail": message}``. Code outside
the API (the store, storage, the worker) raises them too, so the status is decided where the error is known.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    headers: dict[str, str] | None = None  # sent with the answer (e.g. Retry-After)


class Unauthorized(ServiceError):
    """No API key, or one that is not live; the answer says how to authenticate (RFC 6750)."""

    status_code = 401

    def __init__(self, message: str, challenge: str = "Bearer") -> None:
        super().__init__(message)
        self.headers = {"WWW-Authenticate": challenge}


class InvalidJob(ServiceError):
    """A submission that cannot run as given: bad JSON, a spec that does not build, data that does not fit."""

    status_code = 422


class JobConflict(ServiceError):
    """The request clashes with the job's state or an earlier request (a reused Idempotency-Key)."""

    status_code = 409


class NotFound(ServiceError):
    status_code = 404


class TooLarge(ServiceError):
    status_code = 413


class QuotaExceeded(ServiceError):
    """The owner has used up an allowance (active jobs, storage); it frees up as jobs finish or files go."""

    status_code = 429


class UnsupportedMediaType(ServiceError):
    status_code = 415


class Unavailable(ServiceError):
    """A dependency (the database, the broker) cannot be reached; retrying later may succeed."""

    status_code = 503

"""Every error leaves the API as JSON ``{"detail": "a sentence for a human"}``; tracebacks stay in the log."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from service.errors import ServiceError

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong and what to change")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the errors a route answers with, all shaped like ``ErrorBody``."""
    return {code: {"model": ErrorBody} for code in codes}


def describe_errors(errors: Iterable[Mapping[str, Any]], root: str = "") -> str:
    """Pydantic's errors as one line per field: ``options.epochs: Input should be less than or equal to 10000``."""
    lines = []
    for error in errors:
        where = ".".join(str(part) for part in (root, *error["loc"]) if part != "") or "body"
        lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=exc.headers)


async def _invalid_parameters(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": describe_errors(exc.errors())}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's answers, with its bare "Not Found" for a path no route has made specific."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and exc.detail == "Not Found":
        path = request.url.path
        shown = path if len(path) <= 200 else f"{path[:200]}..."
        exc = HTTPException(404, f"no such path {shown!r}; the API's paths are listed at /docs", exc.headers)
    return await http_exception_handler(request, exc)


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    logger.error("database error on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "database unavailable; try again shortly"}, status_code=503)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error; it has been logged"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_parameters)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(PoolTimeout, _database_down)  # no connection came free in time
    app.add_exception_handler(Exception, _unexpected)

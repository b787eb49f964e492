"""Probes for operators: liveness, readiness (database and broker reachable) and Prometheus metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service import workers

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up; it says nothing about the database or the broker (see /readyz)."""
    return {"status": "ok"}


def _check(name: str, check: Callable[[], object]) -> str:
    try:
        check()
    except Exception as error:  # any failure means "not ready"; the reason goes to the log, not the client
        logger.warning("readiness check %s failed: %s", name, error)
        return "unavailable"
    return "ok"


def _workers_alive(request: Request) -> int:
    settings = request.app.state.settings
    with request.app.state.sessionmaker() as session:
        return workers.count_alive(session=session, within_s=settings.lease_s)


@router.get("/readyz", responses={503: {"description": "a dependency is down; the body names it"}})
def readyz(request: Request) -> JSONResponse:
    """Ready to take jobs: the database answers and, when one is configured, the broker does. ``workers`` says
    how many workers were heard from within a lease; none alive is not "not ready", since jobs wait for them."""
    checks: dict[str, Callable[[], object]] = request.app.state.readiness_checks
    results = {name: _check(name, check) for name, check in checks.items()}
    down = [name for name, result in results.items() if result != "ok"]
    if down:
        return JSONResponse({"detail": f"not ready: {', '.join(down)} unavailable", "checks": results}, status_code=503)
    return JSONResponse({"status": "ready", "checks": results, "workers": _workers_alive(request)})


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

"""Prometheus metrics: requests by route and status, their latency, and jobs by state.

Jobs by state are counted in the database at each scrape, so every API replica reports the same truth however
many workers changed it. Each app has its own registry, so several apps can live in one process (tests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import jobs

logger = logging.getLogger(__name__)


class _JobStates(Collector):
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        try:
            with self.factory() as session:
                counts = jobs.count_by_state(session=session)
        except SQLAlchemyError as error:  # a scrape must not fail with the database; readyz reports that
            logger.warning("jobs by state not collected: %s", error)
            return
        family = GaugeMetricFamily("vdc_jobs", "Jobs by state, over all owners", labels=["state"])
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family


class Metrics:
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vdc_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "vdc_http_request_duration_seconds", "Time to answer HTTP requests", ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(_JobStates(factory))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (``/v1/jobs/{job_id}``), so ids do not
    become labels; requests outside the API's routes (unknown paths, the docs) share the label ``other``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a response starts, the request failed

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)

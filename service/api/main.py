"""The FastAPI application: ``create_app(settings, dispatch)`` wires settings, database, storage and routes.

``dispatch(job_id)`` hands a committed job to the workers (production passes ``service.dispatch.celery_dispatch``;
tests pass a recorder). ``broker_check()`` raises when the broker is unreachable; /readyz reports it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib.metadata import version

from fastapi import FastAPI

from service.api.database import Database
from service.api.errors import install_error_handlers
from service.api.metrics import Metrics, MetricsMiddleware
from service.api.routes import artifacts, health, jobs
from service.core.config import Settings, get_settings
from service.db import create_db_engine, create_sessionmaker, ping, upgrade_database
from service.reconciler import Reconciler
from service.storage import Storage
from service.submission import Dispatch

logger = logging.getLogger(__name__)

OVERFLOW = 20


def create_app(
    settings: Settings | None = None,
    dispatch: Dispatch | None = None,
    broker_check: Callable[[], object] | None = None,
) -> FastAPI:
    """The API. At start-up it migrates the database to the newest schema and creates the storage directories.

    Without ``dispatch`` jobs are recorded and stay queued; with it, a reconciler thread requeues the jobs of
    dead workers and re-sends jobs the broker lost (``service.reconciler``). Without ``broker_check`` /readyz
    checks only the database.
    """
    settings = settings or get_settings()
    # The overflow serves what runs beside the requests' turns: submissions, the reconciler, probes, metrics.
    engine = create_db_engine(settings.database_url, pool_size=settings.api_db_concurrency, max_overflow=OVERFLOW)
    factory = create_sessionmaker(engine)
    storage = Storage.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upgrade_database(settings.database_url)
        storage.create_dirs()
        reconciler = None
        if dispatch is None:
            logger.warning("no dispatcher: jobs are recorded but no worker is told to run them")
        elif settings.reconcile_interval_s > 0:
            reconciler = Reconciler(
                factory, dispatch, interval_s=settings.reconcile_interval_s,
                redispatch_after_s=settings.redispatch_after_s,
            )
            reconciler.start()
        yield
        if reconciler is not None:
            reconciler.stop()
        engine.dispose()

    app = FastAPI(
        title="vdcompress",
        version=version("vdcompress"),
        description="Compress neural networks with Sparse Variational Dropout. Authenticate with "
        "`Authorization: Bearer <API key>`.",
        lifespan=lifespan,
    )
    metrics = Metrics(factory)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = factory
    app.state.database = Database(
        factory, concurrency=settings.api_db_concurrency, max_waiting=settings.api_max_waiting
    )
    app.state.storage = storage
    app.state.dispatch = dispatch
    app.state.metrics = metrics
    app.state.readiness_checks = {"database": partial(ping, engine)}
    if broker_check is not None:
        app.state.readiness_checks["broker"] = broker_check
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_error_handlers(app)
    for module in (jobs, artifacts, health):
        app.include_router(module.router)
    return app

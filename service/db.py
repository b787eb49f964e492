"""The database: engines, sessions and schema migrations, the same for the API and the workers.

SQLite (the default) gets foreign keys, WAL (readers never wait for the writer) and a busy timeout, so an API
and a worker process can share one file. The schema is made only by the alembic migrations in
``service/migrations``, applied by ``upgrade_database``.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_S = 30
POSTGRES_CONNECT_TIMEOUT_S = 5


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def create_db_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    """An engine for ``url`` whose pool keeps ``pool_size`` connections and opens up to ``max_overflow`` more
    for a moment; a SQLite file's directory is created, and a dropped connection is replaced."""
    pool = {"pool_size": pool_size, "max_overflow": max_overflow}
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread: a pooled connection serves whichever thread checks it out next.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}, **pool
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **pool)


def create_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that expire their objects on commit: a job is re-read after every change, since other
    processes (the API, the workers) change it too."""
    return sessionmaker(engine)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for one unit of work (a request, a task): rolled back on error, always closed."""
    with factory() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise


def ping(engine: Engine) -> None:
    """Raise unless the database answers a trivial query."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


# Alembic keeps its migration context in module globals, so threads of one process must take turns.
_THREAD_LOCK = threading.Lock()


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Processes starting together (an API and its workers) migrate one at a time.

    For SQLite a lock file next to the database does it; PostgreSQL takes an advisory lock in ``env.py``.
    """
    sqlite_file = _sqlite_file(url)
    with _THREAD_LOCK:
        if sqlite_file is None:
            yield
            return
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        with open(sqlite_file.with_name(f"{sqlite_file.name}.migrate.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Passed as an attribute, not an ini option: ini interpolation would mangle a '%' in a password.
    config.attributes["url"] = url
    return config


def upgrade_database(url: str) -> None:
    """Bring the database at ``url`` to the newest schema; safe to call from every process at start-up."""
    with _migration_lock(url):
        command.upgrade(alembic_config(url), "head")

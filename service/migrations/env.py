"""Alembic's entry point: runs the migrations in ``versions/`` against the service's database.

``service.db.upgrade_database(url)`` is the usual way in (the API and the workers call it at start-up). The
alembic command also works, for new revisions: ``alembic -c service/migrations/alembic.ini revision
--autogenerate -m "what changed"`` compares ``service.models`` with the database at ``VDC_DATABASE_URL``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from service.core.config import get_settings
from service.db import create_db_engine
from service.models import Base

# Any fixed number: every process that migrates PostgreSQL waits for this lock, so only one migrates at once.
POSTGRES_LOCK_ID = 7_460_301

config = context.config
url = config.attributes.get("url") or get_settings().database_url
# render_as_batch: SQLite cannot ALTER most things, so changes are made by copying the table.
options = {"target_metadata": Base.metadata, "render_as_batch": True, "compare_type": True}

if context.is_offline_mode():
    context.configure(url=url, literal_binds=True, **options)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, **options)
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": POSTGRES_LOCK_ID})
                context.run_migrations()
    finally:
        engine.dispose()

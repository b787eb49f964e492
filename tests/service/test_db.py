"""The schema comes from the migrations, matches the models, and SQLite is set up for several processes."""

import threading

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from service.db import alembic_config, create_db_engine, ping, upgrade_database
from service.models import Base


def test_migrations_build_the_schema_of_the_models(settings):
    upgrade_database(settings.database_url)
    upgrade_database(settings.database_url)  # a second start-up finds nothing to do
    engine = create_db_engine(settings.database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == "0003"
    engine.dispose()


def test_migrations_go_down_and_up_again(settings):
    upgrade_database(settings.database_url)
    command.downgrade(alembic_config(settings.database_url), "base")
    engine = create_db_engine(settings.database_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade_database(settings.database_url)
    assert {"jobs", "api_keys", "workers"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_processes_starting_together_migrate_once(settings):
    errors = []

    def start():
        try:
            upgrade_database(settings.database_url)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_sqlite_uses_wal_and_foreign_keys(settings):
    engine = create_db_engine(settings.database_url)
    ping(engine)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()

"""The service's settings, read once from ``VDC_*`` environment variables.

The API, the worker and the CLI all build on the same ``Settings``, so they agree on where the database, the
broker and the files are.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MiB = 1 << 20

# Passwords that ship in examples; a production deployment that still uses one is open to anyone who read them.
PLACEHOLDER_PASSWORDS = frozenset({"changethis", "changeme", "password", "postgres", "secret", "example"})


class Settings(BaseSettings):
    """Every setting has a default that runs on one machine with no server besides the API (SQLite, local files).

    Paths are made absolute when the settings are read, so an API and a worker started in the same directory
    point at the same files. ``artifact_dir``, ``upload_dir`` and the SQLite database live under ``data_dir``
    unless set.

    ``environment="production"`` refuses URLs whose password is a well-known placeholder. SQLite stays allowed
    there: a single-machine deployment (``vdc serve``) is a real production setup. Workers on other machines
    need PostgreSQL, since SQLite must not be shared over a network file system. An in-memory SQLite database
    is refused everywhere: each connection would see a different, empty database.
    """

    # hide_input_in_errors: a refused URL may carry a password, and errors end up in logs.
    model_config = SettingsConfigDict(env_prefix="VDC_", extra="ignore", hide_input_in_errors=True)

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("vdc-data")
    database_url: str = Field(description="SQLAlchemy URL; default: SQLite file data_dir/vdc.db")
    broker_url: str = Field("", description="Celery broker URL; empty means no broker is configured")
    artifact_dir: Path = Field(description="job outputs, one directory per job; default: data_dir/artifacts")
    upload_dir: Path = Field(description="uploaded job inputs, one directory per job; default: data_dir/uploads")
    max_upload_bytes: int = Field(512 * MiB, gt=0, description="total size of the files uploaded with one job")
    max_json_bytes: int = Field(1 * MiB, gt=0, description="size of a job's JSON request")
    max_parameters: int = Field(50_000_000, gt=0, description="largest model (in parameters) a job may train")
    page_size_max: int = Field(100, gt=0, description="most jobs returned by one GET /v1/jobs")
    api_db_concurrency: int = Field(
        4, gt=0, description="database calls one API process runs at once (its pool keeps as many connections); "
        "on two cores more threads only contend for Python's interpreter lock"
    )
    api_max_waiting: int = Field(
        1000, gt=0, description="requests one API process lets wait for the database; past that it answers 503 "
        "with Retry-After at once"
    )
    torch_threads: int = Field(1, gt=0, description="threads each worker process gives torch; workers share cores")
    max_attempts: int = Field(3, gt=0, description="runs of a job (first one and redeliveries) before it fails")
    job_time_limit_s: float = Field(6 * 3600, gt=0, description="wall-clock seconds a job may run")
    checkpoint_dir: Path = Field(description="running jobs' epoch checkpoints; default: data_dir/checkpoints")
    lease_s: float = Field(
        60, gt=0, description="a worker holds a running job this long after its last heartbeat; then the job is "
        "requeued, as its worker is presumed dead"
    )
    heartbeat_s: float = Field(10, gt=0, description="how often a worker renews the lease of the job it runs")
    redispatch_after_s: float = Field(
        300, gt=0, description="a job queued this long without being picked up is handed to the broker again "
        "(the wait doubles with each hand-over, up to an hour): covers messages a broker lost"
    )
    reconcile_interval_s: float = Field(
        15, ge=0, description="how often the API looks for lost and stalled jobs; 0 turns the reconciler off"
    )
    max_active_jobs_per_owner: int = Field(10, gt=0, description="queued and running jobs one owner may have at once")
    max_running_jobs_per_owner: int = Field(
        2, gt=0, description="jobs of one owner that run at once; the owner's other jobs wait in the queue"
    )
    defer_s: float = Field(30, gt=0, description="how long a job held back by its owner's running limit waits")
    max_storage_bytes_per_owner: int = Field(
        5 * 1024 * MiB, gt=0, description="disk one owner's jobs may use: their uploads and artifacts together"
    )
    max_dataset_samples: int = Field(
        2_000_000, gt=0, description="examples (x and x_val together) in a job's uploaded dataset"
    )
    max_dataset_bytes: int = Field(
        2 * 1024 * MiB, gt=0, description="size of a job's uploaded dataset once decompressed, read from its headers"
    )
    max_epochs: int = Field(
        1000, gt=0, description="epochs a job may train: epochs, plus pretrain_epochs that run, plus finetune_epochs"
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, values: dict[str, Any]) -> dict[str, Any]:
        data_dir = Path(values.get("data_dir") or cls.model_fields["data_dir"].default).resolve()
        values["data_dir"] = data_dir
        for key, default in (
            ("artifact_dir", data_dir / "artifacts"),
            ("upload_dir", data_dir / "uploads"),
            ("checkpoint_dir", data_dir / "checkpoints"),
        ):
            values[key] = Path(values.get(key) or default).resolve()
        values["database_url"] = values.get("database_url") or f"sqlite:///{data_dir / 'vdc.db'}"
        return values

    @model_validator(mode="after")
    def _lease_outlasts_heartbeats(self) -> Settings:
        if self.lease_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"VDC_LEASE_S ({self.lease_s}) must be at least twice VDC_HEARTBEAT_S ({self.heartbeat_s}), or a "
                "live worker's job would be taken from it after one late heartbeat"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        try:
            url = make_url(self.database_url)
        except ArgumentError:
            raise ValueError("VDC_DATABASE_URL is not a database URL (e.g. postgresql://user:pw@host/db)") from None
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ValueError(
                "VDC_DATABASE_URL points at an in-memory SQLite database, which every connection and every "
                "worker would see empty; use a file (sqlite:////path/vdc.db) or PostgreSQL"
            )
        if self.environment == "production":
            for name, password in (
                ("VDC_DATABASE_URL", url.password),
                ("VDC_BROKER_URL", urlsplit(self.broker_url).password),
            ):
                if password is not None and str(password).lower() in PLACEHOLDER_PASSWORDS:
                    raise ValueError(f"{name} uses the placeholder password {password!r}; set a real one in production")
        return self


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()

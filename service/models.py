"""What the service stores (SQLAlchemy tables) and what it says (pydantic models).

Tables hold everything the service needs; the ``*Public`` models hold only what a caller may see: never a key
hash, a file path or a worker's internals.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from recipe.options import JobOptions
from recipe.pipeline import JobInput
from recipe.progress import Progress
from service.states import JobState

# The column's check constraint, as the migrations wrote it.
STATES: tuple[str, ...] = tuple(state.value for state in JobState)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database; SQLite would otherwise hand back naive datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    # Named constraints, so migrations can refer to them on every database.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ApiKey(Base):
    """A key that acts for ``owner``. Only the SHA-256 of the key is kept; ``prefix`` identifies it in lists."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    """One compression job. ``request`` is the caller's ``JobRequest``; ``uploads`` the size and SHA-256 of each
    uploaded file (the files themselves live in storage, keyed by the job's id)."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        CheckConstraint(f"state IN {STATES}", name="state"),
        Index("ix_jobs_owner_created_at", "owner", "created_at"),
        Index("ix_jobs_state_dispatched_at", "state", "dispatched_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    uploads: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # While running: the worker holding the job renews this; past it, the job is presumed orphaned.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the job was last handed to the broker, and how often: the reconciler re-sends lost messages.
    dispatched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatches: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Worker(Base):
    """A worker process, as it last said it was up: it renews ``seen_at`` every heartbeat while it runs, so
    workers that died (or lost their machine) fall silent rather than having to say so."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # Celery's node name, e.g. vdc0@host
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class BuiltinDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    builtin: str = Field(max_length=100, examples=["digits"])


class JobRequest(BaseModel):
    """What to compress: ``model`` is ``{"preset": name, ...preset options}`` or ``{"spec": {...}}``, or left out
    when an ONNX file is uploaded; ``dataset`` is ``{"builtin": name}``, or left out when an npz file is
    uploaded. Paths are never accepted: files arrive as uploads."""

    model_config = ConfigDict(extra="forbid")

    model: dict[str, Any] | None = Field(
        None, examples=[{"preset": "lenet-300-100"}],
        description="a preset or a spec; leave it out and upload the network as the 'model' part (ONNX)",
    )
    dataset: BuiltinDataset | None = None
    options: JobOptions = Field(default_factory=JobOptions)

    @field_validator("dataset", mode="before")
    @classmethod
    def _builtin_only(cls, dataset: Any) -> Any:
        if isinstance(dataset, dict) and set(dataset) != {"builtin"}:
            raise ValueError(
                "give {'builtin': name}, or leave dataset out and upload an npz file as the 'dataset' part "
                "(paths on the server are not accepted)"
            )
        return dataset

    @field_validator("model")
    @classmethod
    def _preset_or_spec(cls, model: dict[str, Any] | None) -> dict[str, Any] | None:
        if model is None:
            return None
        if len(model.keys() & {"preset", "spec"}) != 1:
            raise ValueError(
                "give either {'preset': name, ...options} or {'spec': {...}}, or leave model out and upload an ONNX "
                "file as the 'model' part (paths on the server are not accepted)"
            )
        if "preset" in model and not isinstance(model["preset"], str):
            raise ValueError(f"'preset' must be a preset name, got {model['preset']!r}")
        if "spec" in model and (len(model) != 1 or not isinstance(model["spec"], dict)):
            raise ValueError("{'spec': ...} takes one object (input_shape, num_classes, layers) and no other key")
        return model

    def to_job_input(
        self, *, weights: Path | None = None, dataset: Path | None = None, model: Path | None = None
    ) -> JobInput:
        """The pipeline's view of this request, with uploaded files given by path."""
        if dataset is not None:
            source = {"npz": str(dataset)}
        elif self.dataset is not None:
            source = {"builtin": self.dataset.builtin}
        else:
            raise ValueError("no dataset: give {'builtin': name} or upload an npz file")
        if model is not None:
            network: dict[str, Any] = {"onnx": str(model)}
        elif self.model is not None:
            network = self.model
        else:
            raise ValueError("no model: give a preset or a spec, or upload an ONNX file")
        return JobInput(
            model=network,
            dataset=source,
            weights=None if weights is None else str(weights),
            options=self.options,
        )


class Upload(BaseModel):
    bytes: int
    sha256: str


class JobLinks(BaseModel):
    self: str
    artifacts: str


class JobPublic(BaseModel):
    id: str
    state: JobState
    cancel_requested: bool
    request: JobRequest
    uploads: dict[str, Upload]
    progress: Progress | None
    error: str | None = Field(description="for a failed job, what went wrong and what to change")
    attempts: int = Field(description="runs started; more than 1 when a worker was lost and the job resumed")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    links: JobLinks

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        path = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            state=job.state,  # type: ignore[arg-type]
            cancel_requested=job.cancel_requested,
            request=JobRequest.model_validate(job.request),
            uploads=job.uploads,
            progress=job.progress,
            error=job.error,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
            links=JobLinks(self=path, artifacts=f"{path}/artifacts"),
        )


class JobList(BaseModel):
    """One page of the caller's jobs, newest first; ``next`` is the next page's URL, or null on the last."""

    items: list[JobPublic]
    total: int
    limit: int
    offset: int
    next: str | None


class ArtifactPublic(BaseModel):
    name: str
    bytes: int
    url: str


class ArtifactList(BaseModel):
    items: list[ArtifactPublic]

"""Where a job's files live: its uploaded inputs under ``upload_dir/{job_id}/``, its outputs under
``artifact_dir/{job_id}/``, its training checkpoints (while it runs) under ``checkpoint_dir/{job_id}/``.

Every file is written to a hidden temporary name and renamed when complete, so a reader never sees half a
file; only names from fixed lists are ever read or served, so a name from a URL cannot reach anything else.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from recipe.pipeline import ARTIFACTS
from recipe.plots import PLOTS
from service.core.config import Settings
from service.errors import TooLarge
from vdcore.files import atomic_path

ARTIFACT_NAMES = (*ARTIFACTS, *PLOTS)
MEDIA_TYPES = {".onnx": "application/octet-stream", ".json": "application/json",
               ".safetensors": "application/octet-stream", ".png": "image/png"}
# Upload part -> the file name it is stored under.
UPLOADS = {"weights": "weights.safetensors", "dataset": "dataset.npz", "model": "model.onnx"}
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Artifact:
    name: str
    bytes: int
    path: Path


def _job_dir(root: Path, job_id: str) -> Path:
    """``root/job_id``, for canonical uuid strings only, so no id can point outside ``root``."""
    try:
        canonical = str(uuid.UUID(job_id))
    except ValueError:
        canonical = None
    if canonical != job_id:
        raise ValueError(f"not a job id: {job_id!r}")
    return root / job_id


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.4g} MiB"


@dataclass(frozen=True)
class Storage:
    upload_dir: Path
    artifact_dir: Path
    checkpoint_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        return cls(settings.upload_dir, settings.artifact_dir, settings.checkpoint_dir)

    def create_dirs(self) -> None:
        for folder in (self.upload_dir, self.artifact_dir, self.checkpoint_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def job_artifact_dir(self, job_id: str) -> Path:
        """The directory a finished job's artifacts are served from."""
        return _job_dir(self.artifact_dir, job_id)

    def _partial(self, job_id: str, attempt: int) -> Path:
        return _job_dir(self.artifact_dir, job_id).with_name(f".{job_id}.{attempt}.partial")

    def partial_artifact_dir(self, job_id: str, attempt: int) -> Path:
        """A fresh hidden directory for one attempt in progress: ``publish_artifacts`` renames it into place, so
        the served directory only ever holds the complete set of one successful run. One per attempt: a worker
        presumed dead but only slow never writes into its successor's files."""
        partial = self._partial(job_id, attempt)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return partial

    def publish_artifacts(self, job_id: str, attempt: int) -> None:
        final = _job_dir(self.artifact_dir, job_id)
        # A run whose success could not be recorded left its directory; it is not served (the job is not
        # succeeded), and this run's complete set replaces it.
        shutil.rmtree(final, ignore_errors=True)
        self._partial(job_id, attempt).replace(final)

    def job_checkpoint_dir(self, job_id: str) -> Path:
        """Where a running job saves its epochs, kept across attempts so that a rerun resumes."""
        return _job_dir(self.checkpoint_dir, job_id)

    def release_job_files(self, job_id: str) -> None:
        """Once a job has finished: its uploads, checkpoints and unpublished attempts go; artifacts stay."""
        self.delete_uploads(job_id)
        shutil.rmtree(self.job_checkpoint_dir(job_id), ignore_errors=True)
        for partial in self.artifact_dir.glob(f".{_job_dir(self.artifact_dir, job_id).name}.*.partial"):
            shutil.rmtree(partial, ignore_errors=True)

    def save_uploads(self, job_id: str, files: Mapping[str, BinaryIO], max_bytes: int) -> dict[str, dict[str, Any]]:
        """Copy each upload part (``weights``, ``dataset``) in chunks into the job's upload directory.

        Returns each file's size and SHA-256. ``TooLarge`` once the files together pass ``max_bytes``; what was
        written is then deleted.
        """
        if not files:
            return {}
        folder = _job_dir(self.upload_dir, job_id)
        folder.mkdir(parents=True, exist_ok=True)
        saved: dict[str, dict[str, Any]] = {}
        total = 0
        try:
            for part, source in files.items():
                digest, size = hashlib.sha256(), 0
                with atomic_path(folder / UPLOADS[part]) as partial, open(partial, "wb") as out:
                    while chunk := source.read(CHUNK_BYTES):
                        size += len(chunk)
                        if total + size > max_bytes:
                            raise TooLarge(f"the uploaded files are larger than the {_mib(max_bytes)} a job may upload")
                        digest.update(chunk)
                        out.write(chunk)
                total += size
                saved[part] = {"bytes": size, "sha256": digest.hexdigest()}
        except BaseException:
            self.delete_uploads(job_id)
            raise
        return saved

    def upload_paths(self, job_id: str) -> dict[str, Path]:
        """The job's uploaded files by part name, for ``JobRequest.to_job_input(**paths)``."""
        folder = _job_dir(self.upload_dir, job_id)
        return {part: folder / name for part, name in UPLOADS.items() if (folder / name).is_file()}

    def delete_uploads(self, job_id: str) -> None:
        shutil.rmtree(_job_dir(self.upload_dir, job_id), ignore_errors=True)

    def artifact(self, job_id: str, name: str) -> Artifact | None:
        """The named artifact if the name is one we serve and the file is complete, else None."""
        if name not in ARTIFACT_NAMES:
            return None
        path = _job_dir(self.artifact_dir, job_id) / name
        return Artifact(name, path.stat().st_size, path) if path.is_file() else None

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        """The job's complete artifacts, in the order of ``ARTIFACT_NAMES``."""
        found = (self.artifact(job_id, name) for name in ARTIFACT_NAMES)
        return [artifact for artifact in found if artifact is not None]


def media_type(name: str) -> str:
    return MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")

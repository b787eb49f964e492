"""Storage: uploads written whole or not at all, only known artifact names ever served."""

import hashlib
import io
import uuid

import pytest

from service.errors import TooLarge
from service.storage import ARTIFACT_NAMES, Storage, media_type


@pytest.fixture
def storage(tmp_path):
    storage = Storage(tmp_path / "uploads", tmp_path / "artifacts", tmp_path / "checkpoints")
    storage.create_dirs()
    return storage


JOB = str(uuid.uuid4())


def test_uploads_are_saved_with_size_and_hash(storage):
    saved = storage.save_uploads(JOB, {"weights": io.BytesIO(b"abc")}, max_bytes=10)
    assert saved == {"weights": {"bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}}
    assert storage.upload_paths(JOB)["weights"].read_bytes() == b"abc"
    assert set(storage.upload_paths(JOB)) == {"weights"}


def test_the_limit_is_on_all_files_together(storage):
    files = {"weights": io.BytesIO(b"x" * 6), "dataset": io.BytesIO(b"y" * 6)}
    with pytest.raises(TooLarge, match="larger than the"):
        storage.save_uploads(JOB, files, max_bytes=10)
    assert not (storage.upload_dir / JOB).exists()


def test_only_complete_known_artifacts_are_listed(storage):
    folder = storage.job_artifact_dir(JOB)
    folder.mkdir()
    for name in ("report.json", "model.onnx", "input_relevance.png", ".baseline.onnx.partial", "secret.txt"):
        (folder / name).write_bytes(b"1234")
    assert [a.name for a in storage.list_artifacts(JOB)] == ["model.onnx", "report.json", "input_relevance.png"]
    assert storage.artifact(JOB, "secret.txt") is None and storage.artifact(JOB, "baseline.onnx") is None
    assert storage.artifact(JOB, "model.onnx").bytes == 4


@pytest.mark.parametrize("job_id", ["../etc", "", "abc", str(uuid.uuid4()).upper()])
def test_paths_are_built_only_from_job_ids(storage, job_id):
    with pytest.raises(ValueError, match="not a job id"):
        storage.upload_paths(job_id)


def test_every_artifact_has_a_media_type():
    types = {media_type(name) for name in ARTIFACT_NAMES}
    assert types == {"image/png", "application/json", "application/octet-stream"}

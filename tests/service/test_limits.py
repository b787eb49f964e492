"""Limits checked at submission, each set small through ``make_settings``: per owner (active jobs, storage) and
per job (dataset examples and decompressed bytes, epochs, parameters). A refusal names the limit and its
setting and leaves nothing behind; a job just within the limit is accepted."""

import json
import zipfile

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import update

from recipe.pipeline import JobError, JobInput, JobTooLarge, prepare
from service.core.config import Settings
from service.models import Job, utcnow
from tests.service.conftest import DIGITS_REQUEST, TINY_SPEC, new_key, npz_bytes, tiny_dataset, weights_bytes

SPEC_REQUEST = {"model": {"spec": TINY_SPEC}}
# lenet-300-100 on the 8x8 digits: 64*300+300 + 300*100+100 + 100*10+10.
LENET_ON_DIGITS_PARAMETERS = 50_610
# tiny_dataset(count): x float32 [count, 4] and y int64 [count], as declared in the npz headers.
TINY_BYTES_PER_EXAMPLE = 4 * 4 + 8


def multipart(request, **files):
    parts = {"request": (None, json.dumps(request), "application/json")}
    return parts | {name: (f"{name}.bin", content, "application/octet-stream") for name, content in files.items()}


@pytest.fixture
def limited(make_client, make_settings):
    """A client whose settings are ``make_settings(**limits)``, and headers for alice on it."""

    def make(**limits):
        client = make_client(make_settings(**limits))
        return client, {"Authorization": f"Bearer {new_key(client, 'alice')}"}

    return make


def submit_dataset(client, headers, dataset, request=SPEC_REQUEST, **files):
    return client.post("/v1/jobs", files=multipart(request, dataset=dataset, **files), headers=headers)


def refused(response, status, *names):
    """The response is ``status`` and its message names each of ``names`` (the setting, the limit's value)."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert all(name in detail for name in names), detail
    return detail


def nothing_left(client, headers, jobs_expected, dispatched):
    """Only the accepted jobs exist, were dispatched and have upload directories."""
    listed = [job["id"] for job in client.get("/v1/jobs", headers=headers).json()["items"]]
    assert len(listed) == jobs_expected and sorted(dispatched) == sorted(listed)
    upload_dir = client.app.state.settings.upload_dir
    assert {p.name for p in upload_dir.iterdir()} <= set(listed)


def set_state(client, job_id, state):
    """Put the job in ``state`` directly in the database, as a worker would leave it."""
    with client.app.state.sessionmaker() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state=state, started_at=utcnow()))
        session.commit()


def succeed(client, job_id, artifacts):
    """What a worker leaves after a successful run: the artifacts in the job's directory, the job succeeded."""
    folder = client.app.state.storage.job_artifact_dir(job_id)
    folder.mkdir(parents=True)
    for name, content in artifacts.items():
        (folder / name).write_bytes(content)
    set_state(client, job_id, "succeeded")


# --- settings -----------------------------------------------------------------------------------------------

NEW_LIMITS = {
    "max_active_jobs_per_owner": 10,
    "max_storage_bytes_per_owner": 5 << 30,
    "max_dataset_samples": 2_000_000,
    "max_dataset_bytes": 2 << 30,
    "max_epochs": 1000,
}


def test_limit_defaults_and_environment(monkeypatch, tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert {name: getattr(settings, name) for name in NEW_LIMITS} == NEW_LIMITS
    monkeypatch.setenv("VDC_MAX_ACTIVE_JOBS_PER_OWNER", "3")
    monkeypatch.setenv("VDC_MAX_EPOCHS", "50")
    settings = Settings(data_dir=tmp_path)
    assert (settings.max_active_jobs_per_owner, settings.max_epochs) == (3, 50)


@pytest.mark.parametrize("name", NEW_LIMITS)
def test_limits_must_be_positive(name):
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: 0})


# --- active jobs per owner ----------------------------------------------------------------------------------


def test_active_jobs_per_owner(limited, dispatched):
    client, alice = limited(max_active_jobs_per_owner=2)
    first, second = (client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice) for _ in range(2))
    assert (first.status_code, second.status_code) == (202, 202)  # just within the limit
    refused(
        client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice), 429, "max_active_jobs_per_owner", "at most 2"
    )
    nothing_left(client, alice, 2, dispatched)
    bob = {"Authorization": f"Bearer {new_key(client, 'bob')}"}
    assert client.post("/v1/jobs", json=DIGITS_REQUEST, headers=bob).status_code == 202  # per owner

    # A running job counts; a finished one does not.
    set_state(client, first.json()["id"], "running")
    assert client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice).status_code == 429
    assert client.delete(f"/v1/jobs/{second.json()['id']}", headers=alice).status_code == 202
    assert client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice).status_code == 202


def test_an_idempotent_retry_is_not_refused_at_the_limit(limited, dispatched):
    client, alice = limited(max_active_jobs_per_owner=1)
    first = client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice | {"Idempotency-Key": "k"})
    again = client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice | {"Idempotency-Key": "k"})
    assert (first.status_code, again.status_code) == (202, 200) and again.json()["id"] == first.json()["id"]
    # A refused submission frees its key: once there is room, the same key submits afresh.
    other = DIGITS_REQUEST | {"options": {"epochs": 3}}
    assert client.post("/v1/jobs", json=other, headers=alice | {"Idempotency-Key": "k2"}).status_code == 429
    client.delete(f"/v1/jobs/{first.json()['id']}", headers=alice)
    assert client.post("/v1/jobs", json=other, headers=alice | {"Idempotency-Key": "k2"}).status_code == 202
    assert len(dispatched) == 2


# --- storage per owner --------------------------------------------------------------------------------------


def test_storage_per_owner_counts_uploads_and_artifacts(limited, dispatched):
    dataset, artifacts = tiny_dataset(), {"model.onnx": b"m" * 300, "report.json": b"{}"}
    limit = 2 * len(dataset) + 302
    client, alice = limited(max_storage_bytes_per_owner=limit)
    first = submit_dataset(client, alice, dataset).json()["id"]
    succeed(client, first, artifacts)
    assert submit_dataset(client, alice, dataset).status_code == 202  # exactly at the limit
    assert client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice).status_code == 202  # no uploads: no growth
    detail = refused(
        submit_dataset(client, alice, dataset), 429, "max_storage_bytes_per_owner", f"{limit:,} bytes"
    )
    assert f"{limit + len(dataset):,} bytes" in detail
    nothing_left(client, alice, 3, dispatched)
    bob = {"Authorization": f"Bearer {new_key(client, 'bob')}"}
    assert submit_dataset(client, bob, dataset).status_code == 202  # per owner

    # Artifacts that grew past the limit refuse even a job that uploads nothing.
    (client.app.state.storage.job_artifact_dir(first) / "weights.safetensors").write_bytes(b"w")
    refused(client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice), 429, "max_storage_bytes_per_owner")


def test_released_uploads_stop_counting(limited):
    dataset = tiny_dataset()
    client, alice = limited(max_storage_bytes_per_owner=len(dataset))
    first = submit_dataset(client, alice, dataset).json()["id"]
    refused(submit_dataset(client, alice, dataset), 429, "max_storage_bytes_per_owner")
    set_state(client, first, "succeeded")
    client.app.state.storage.delete_uploads(first)  # a finished job's uploads are released
    assert submit_dataset(client, alice, dataset).status_code == 202


def test_one_jobs_uploads_over_the_storage_limit_are_too_large(limited, dispatched, tmp_path):
    weights, dataset = weights_bytes(TINY_SPEC, tmp_path), tiny_dataset()
    client, alice = limited(max_storage_bytes_per_owner=len(weights) + len(dataset) - 1)
    response = submit_dataset(client, alice, dataset, weights=weights)
    refused(response, 413, "max_storage_bytes_per_owner", f"{len(weights) + len(dataset):,} bytes")
    nothing_left(client, alice, 0, dispatched)


# --- dataset examples and bytes -----------------------------------------------------------------------------


def test_dataset_examples(limited, dispatched):
    client, alice = limited(max_dataset_samples=30)
    assert submit_dataset(client, alice, tiny_dataset(count=30)).status_code == 202
    detail = refused(submit_dataset(client, alice, tiny_dataset(count=31)), 413, "max_dataset_samples", "30 allowed")
    assert "31 examples" in detail
    x, y = np.zeros((20, 4), np.float32), np.arange(20) % 3
    with_val = npz_bytes(x=x, y=y, x_val=x[:11], y_val=y[:11])
    refused(submit_dataset(client, alice, with_val), 413, "max_dataset_samples", "31 examples")
    nothing_left(client, alice, 1, dispatched)


def test_dataset_bytes(limited, dispatched):
    declared = 30 * TINY_BYTES_PER_EXAMPLE
    client, alice = limited(max_dataset_bytes=declared)
    assert submit_dataset(client, alice, tiny_dataset(count=30)).status_code == 202
    detail = refused(
        submit_dataset(client, alice, tiny_dataset(count=31)), 413, "max_dataset_bytes", f"{declared:,} allowed"
    )
    assert f"{31 * TINY_BYTES_PER_EXAMPLE:,} bytes" in detail
    nothing_left(client, alice, 1, dispatched)


def test_a_huge_dataset_is_refused_from_its_headers_before_it_is_read(limited, dispatched, tmp_path, monkeypatch):
    """A few kilobytes declaring 4 GB of float32: refused under the default 2 GiB, without reading any data."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1_000_000, 1000)})
        f.write(b"\0" * 100_000)
    assert path.stat().st_size < 10_000

    def no_reading(*args, **kwargs):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(np, "load", no_reading)
    client, alice = limited()
    refused(submit_dataset(client, alice, path.read_bytes()), 413, "max_dataset_bytes", "4,000,000,000 bytes")
    nothing_left(client, alice, 0, dispatched)


def test_builtin_datasets_are_not_uploads_and_not_limited(limited):
    client, alice = limited(max_dataset_samples=10, max_dataset_bytes=10)
    assert client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice).status_code == 202


def test_prepare_takes_the_limits_and_keeps_its_defaults(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(tiny_dataset(count=30))
    job = JobInput({"spec": TINY_SPEC}, {"npz": str(path)})
    data = prepare(job).dataset
    assert len(data.x) + len(data.x_val) == 30
    assert prepare(job, max_dataset_bytes=30 * TINY_BYTES_PER_EXAMPLE, max_dataset_samples=30).dataset is not None
    for name, limit in (("max_dataset_samples", 29), ("max_dataset_bytes", 30 * TINY_BYTES_PER_EXAMPLE - 1)):
        with pytest.raises(JobTooLarge) as raised:
            prepare(job, **{name: limit})
        assert raised.value.limit == name and isinstance(raised.value, JobError)  # a worker fails it as the user's


# --- epochs and parameters ----------------------------------------------------------------------------------


def test_epochs_count_pretraining_and_finetuning(limited, dispatched):
    client, alice = limited(max_epochs=10)
    within = DIGITS_REQUEST | {"options": {"epochs": 6, "pretrain_epochs": 2, "finetune_epochs": 2}}
    assert client.post("/v1/jobs", json=within, headers=alice).status_code == 202
    over = DIGITS_REQUEST | {"options": {"epochs": 7, "pretrain_epochs": 2, "finetune_epochs": 2}}
    detail = refused(client.post("/v1/jobs", json=over, headers=alice), 422, "max_epochs", "at most 10")
    assert "11 epochs (7 + 2 pretraining + 2 fine-tuning)" in detail
    refused(client.post("/v1/jobs", json=DIGITS_REQUEST | {"options": {"epochs": 11, "pretrain_epochs": 0,
                                                                       "finetune_epochs": 0}},
                        headers=alice), 422, "max_epochs")
    nothing_left(client, alice, 1, dispatched)


def test_epochs_with_uploaded_weights_skip_pretraining(limited, tmp_path):
    client, alice = limited(max_epochs=10)
    weights = weights_bytes(TINY_SPEC, tmp_path)
    request = SPEC_REQUEST | {"options": {"epochs": 10, "pretrain_epochs": 30, "finetune_epochs": 0}}
    assert submit_dataset(client, alice, tiny_dataset(), request, weights=weights).status_code == 202
    request = SPEC_REQUEST | {"options": {"epochs": 11, "pretrain_epochs": 0, "finetune_epochs": 0}}
    refused(submit_dataset(client, alice, tiny_dataset(), request, weights=weights), 422, "max_epochs")


def test_parameters(limited):
    client, alice = limited(max_parameters=LENET_ON_DIGITS_PARAMETERS)
    assert client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice).status_code == 202
    client, alice = limited(max_parameters=LENET_ON_DIGITS_PARAMETERS - 1)
    refused(client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice), 422, "max_parameters", "at most 50,609")

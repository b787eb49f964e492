"""The HTTP API through TestClient on SQLite: submission and its checks, auth, idempotency, listing, owners,
cancelling, artifacts, probes, metrics and error bodies. The dispatcher records ids; nothing trains."""

import json
from functools import partial

import pytest
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from recipe.options import JobOptions
from recipe.progress import Progress, Stage
from service import jobs, workers
from service.db import create_db_engine, ping
from service.models import Job, utcnow
from service.states import JobState
from tests.service.conftest import DIGITS_REQUEST, TINY_SPEC, new_key, npz_bytes, tiny_dataset, weights_bytes
from vdcore.train import EpochMetrics

MISSING_ID = "00000000-0000-4000-8000-000000000000"
IMAGE_SPEC_WITHOUT_FLATTEN = {
    "input_shape": [1, 8, 8], "num_classes": 10, "layers": [{"type": "linear", "out_features": 10}]
}


def multipart(request, **files):
    parts = {"request": (None, json.dumps(request), "application/json")}
    return parts | {name: (f"{name}.bin", content, "application/octet-stream") for name, content in files.items()}


def upload_dir_is_empty(client):
    folder = client.app.state.settings.upload_dir
    return not folder.exists() or not any(folder.iterdir())


def submit(client, headers, request=DIGITS_REQUEST, **kwargs):
    return client.post("/v1/jobs", json=request, headers=headers, **kwargs)


# --- submitting ---------------------------------------------------------------------------------------------


def test_submit_a_preset_on_a_builtin_dataset(client, alice, dispatched):
    response = submit(client, alice)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}" == job["links"]["self"]
    assert job["links"]["artifacts"] == f"/v1/jobs/{job['id']}/artifacts"
    assert job["state"] == "queued" and job["progress"] is None and job["error"] is None
    assert job["request"]["options"]["epochs"] == 2 and job["request"]["options"]["lr"] == 1e-3
    assert dispatched == [job["id"]]
    assert client.get(job["links"]["self"], headers=alice).json() == job


def test_submit_a_spec_with_uploaded_weights_and_dataset(client, alice, dispatched, tmp_path):
    weights, dataset = weights_bytes(TINY_SPEC, tmp_path), tiny_dataset()
    response = client.post(
        "/v1/jobs", files=multipart({"model": {"spec": TINY_SPEC}}, weights=weights, dataset=dataset), headers=alice
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["uploads"]["weights"]["bytes"] == len(weights)
    assert job["uploads"]["dataset"]["bytes"] == len(dataset) and len(job["uploads"]["dataset"]["sha256"]) == 64
    stored = client.app.state.storage.upload_paths(job["id"])
    assert stored["weights"].read_bytes() == weights and stored["dataset"].read_bytes() == dataset
    assert str(client.app.state.settings.data_dir) not in response.text  # no server paths in answers
    assert dispatched == [job["id"]]


def test_the_request_part_may_be_a_file(client, alice):
    files = {"request": ("job.json", json.dumps(DIGITS_REQUEST).encode(), "application/json")}
    assert client.post("/v1/jobs", files=files, headers=alice).status_code == 202


def test_a_dataset_upload_alone_with_a_preset(client, alice):
    files = multipart({"model": {"preset": "lenet-300-100"}}, dataset=tiny_dataset(features=64))
    job = client.post("/v1/jobs", files=files, headers=alice).json()
    assert job["request"]["dataset"] is None and set(job["uploads"]) == {"dataset"}


BAD_REQUESTS = [
    ({"model": {"preset": "resnet-9000"}, "dataset": {"builtin": "digits"}}, "unknown preset 'resnet-9000'"),
    (
        {"model": {"spec": IMAGE_SPEC_WITHOUT_FLATTEN}, "dataset": {"builtin": "digits"}},
        "layers[0] (linear): needs an input of flat features",
    ),
    ({"model": {"spec": TINY_SPEC | {"num_classes": 1}}, "dataset": {"builtin": "digits"}}, "num_classes must be"),
    ({"model": {"preset": "lenet-300-100", "spec": TINY_SPEC}, "dataset": {"builtin": "digits"}}, "request.model:"),
    ({"model": {"preset": "lenet-300-100"}, "dataset": {"builtin": "mnist-full"}}, "unknown built-in dataset"),
    ({"model": {"preset": "lenet-300-100"}, "dataset": {"npz": "/etc/passwd"}}, "paths on the server are not accepted"),
    ({"model": {"preset": "lenet-300-100"}}, "give exactly one dataset"),
    ({**DIGITS_REQUEST, "options": {"epochs": 0}}, "request.options.epochs: Input should be greater than or equal"),
    ({**DIGITS_REQUEST, "options": {"epochs": "5"}}, "request.options.epochs: Input should be a valid integer"),
    ({**DIGITS_REQUEST, "options": {"lr": 0}}, "request.options.lr: Input should be greater than 0"),
    ({**DIGITS_REQUEST, "options": {"val_fraction": 1.0}}, "request.options.val_fraction"),
    ({**DIGITS_REQUEST, "options": {"device": "tpu"}}, "request.options.device"),
    ({**DIGITS_REQUEST, "options": {"kl_warmup_start": 0.5, "kl_warmup_end": 0.1}}, "KL warm-up needs"),
    ({**DIGITS_REQUEST, "options": {"epoch": 5}}, "request.options.epoch: Extra inputs are not permitted"),
    ({**DIGITS_REQUEST, "options": {"max_accuracy_drop": 0.5, "min_compression": 10}},
     "give one objective at a time, not max_accuracy_drop and min_compression"),
    ({**DIGITS_REQUEST, "options": {"max_accuracy_drop": -0.5}}, "request.options.max_accuracy_drop"),
    ({**DIGITS_REQUEST, "options": {"min_compression": 0.5}}, "request.options.min_compression"),
    ({**DIGITS_REQUEST, "options": {"max_file_bytes": 40_000, "max_accuracy_drop": 1}},
     "give one objective at a time, not max_accuracy_drop and max_file_bytes"),
    ({**DIGITS_REQUEST, "options": {"max_latency_ms": 0.5}},
     "max_latency_ms is measured per batch of latency_batch examples: give both"),
    ({**DIGITS_REQUEST, "options": {"latency_batch": 8}}, "give both, or neither"),
    ({**DIGITS_REQUEST, "options": {"max_latency_ms": -1, "latency_batch": 1}}, "request.options.max_latency_ms"),
    ({**DIGITS_REQUEST, "options": {"max_file_bytes": 0}}, "request.options.max_file_bytes"),
    ({**DIGITS_REQUEST, "options": {"early_stop_patience": 5}}, "early_stop_patience watches an objective's pick"),
    ({**DIGITS_REQUEST, "options": {"early_stop_patience": 5, "max_file_bytes": 10_000}},
     "set max_accuracy_drop or min_compression with it"),
    ({**DIGITS_REQUEST, "model": {"preset": "vgg-like", "width": 1}}, "parameters; this service trains at most"),
]


@pytest.mark.parametrize(("body", "message"), BAD_REQUESTS)
def test_bad_requests_are_refused_with_what_to_fix(make_client, make_settings, body, message, dispatched):
    client = make_client(make_settings(max_parameters=10_000_000))
    headers = {"Authorization": f"Bearer {new_key(client, 'alice')}"}
    response = submit(client, headers, body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert dispatched == [] and client.get("/v1/jobs", headers=headers).json()["total"] == 0


def test_bad_json_is_refused(client, alice):
    response = client.post("/v1/jobs", content=b"{'model': 1", headers=alice | {"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("request: Invalid JSON")


def spec_and_files(tmp_path, dataset=None, spec=TINY_SPEC, weights_spec=TINY_SPEC):
    return multipart(
        {"model": {"spec": spec}}, weights=weights_bytes(weights_spec, tmp_path), dataset=dataset or tiny_dataset()
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (lambda p: spec_and_files(p, dataset=tiny_dataset(features=5)), "'x' has shape [30, 5], but the model takes"),
        (lambda p: spec_and_files(p, dataset=tiny_dataset(top_label=7)), "labels must lie in 0..2"),
        (lambda p: spec_and_files(p, dataset=npz_bytes(x=[[1.0, 2.0, 3.0, 4.0]])), "needs an array named 'y'"),
        (lambda p: spec_and_files(p, dataset=b"not a zip"), "not a readable .npz file"),
        (
            lambda p: spec_and_files(p, weights_spec=TINY_SPEC | {"layers": [{"type": "linear", "out_features": 3}]}),
            "the weights do not fit the model",
        ),
        (lambda p: multipart({"model": {"spec": TINY_SPEC}}, weights=b"junk", dataset=tiny_dataset()), "safetensors"),
        (lambda p: multipart(DIGITS_REQUEST, dataset=tiny_dataset()), "give exactly one dataset"),
        (lambda p: multipart(DIGITS_REQUEST, weight=b"x"), "unexpected part 'weight'"),
        (lambda p: {"weights": ("w", b"x")}, "the 'request' part is missing"),
    ],
    ids=["shape", "labels", "no y", "not npz", "weights shape", "weights junk", "two datasets", "typo", "no request"],
)
def test_bad_uploads_are_refused_and_deleted(client, alice, tmp_path, files, message, dispatched):
    response = client.post("/v1/jobs", files=files(tmp_path), headers=alice)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert upload_dir_is_empty(client) and dispatched == []


def test_uploads_over_the_limit_are_refused(make_client, make_settings, tmp_path):
    client = make_client(make_settings(max_upload_bytes=1000))
    headers = {"Authorization": f"Bearer {new_key(client, 'alice')}"}
    response = client.post("/v1/jobs", files=spec_and_files(tmp_path, dataset=tiny_dataset(count=200)), headers=headers)
    assert response.status_code == 413
    assert "larger than the" in response.json()["detail"]
    assert upload_dir_is_empty(client)


def test_a_body_over_the_limit_is_refused_before_it_is_read(make_client, make_settings):
    client = make_client(make_settings(max_json_bytes=100))
    headers = {"Authorization": f"Bearer {new_key(client, 'alice')}"}
    response = submit(client, headers, DIGITS_REQUEST | {"options": {"epochs": 2, "seed": 1, "lr": 0.01}})
    assert response.status_code == 413
    assert response.json()["detail"] == "the request is larger than the 100 bytes allowed for a JSON job request"


def test_a_streamed_body_is_cut_off_at_the_limit(make_client, make_settings):
    client = make_client(make_settings(max_json_bytes=100))
    headers = {"Authorization": f"Bearer {new_key(client, 'alice')}", "Content-Type": "application/json"}
    chunks = iter([b'{"model": ' + b" " * 80, b" " * 80 + b"}"])  # no Content-Length: sent chunked
    response = client.post("/v1/jobs", content=chunks, headers=headers)
    assert response.status_code == 413


def test_other_content_types_are_refused(client, alice):
    response = client.post("/v1/jobs", content=b"model=lenet", headers=alice | {"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


# --- authentication -----------------------------------------------------------------------------------------


def test_a_missing_key_is_refused(client):
    response = submit(client, {})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize("header", ["Bearer vdc_not-a-key", "Bearer ", "Basic YWxpY2U6cHc="])
def test_a_wrong_key_is_refused(client, alice, header):
    response = client.get("/v1/jobs", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_revoked_key_is_refused(client, app_session):
    from service.keys import authenticate, revoke_api_key

    token = new_key(client, "alice")
    revoke_api_key(session=app_session, key_id=authenticate(session=app_session, token=token).id)
    response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json()["detail"] == "invalid or revoked API key"


def test_the_key_is_checked_before_the_upload_is_read(make_client, make_settings):
    client = make_client(make_settings(max_upload_bytes=10))
    response = client.post("/v1/jobs", files=multipart(DIGITS_REQUEST, dataset=b"x" * 10_000))
    assert response.status_code == 401


# --- idempotency --------------------------------------------------------------------------------------------


def test_a_retried_submission_returns_the_same_job(client, alice, dispatched):
    first = submit(client, alice | {"Idempotency-Key": "abc"})
    again = submit(client, alice | {"Idempotency-Key": "abc"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    assert dispatched == [first.json()["id"]]
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 1


def test_a_retried_upload_returns_the_same_job_and_keeps_one_copy(client, alice, tmp_path):
    files = spec_and_files(tmp_path)
    first = client.post("/v1/jobs", files=files, headers=alice | {"Idempotency-Key": "up"})
    again = client.post("/v1/jobs", files=files, headers=alice | {"Idempotency-Key": "up"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert [p.name for p in client.app.state.settings.upload_dir.iterdir()] == [first.json()["id"]]


def test_reusing_a_key_for_another_request_conflicts(client, alice, tmp_path):
    submit(client, alice | {"Idempotency-Key": "abc"})
    response = submit(client, alice | {"Idempotency-Key": "abc"}, DIGITS_REQUEST | {"options": {"epochs": 3}})
    assert response.status_code == 409
    assert "Idempotency-Key 'abc' was already used for a different request" in response.json()["detail"]
    changed_file = spec_and_files(tmp_path)
    client.post("/v1/jobs", files=changed_file, headers=alice | {"Idempotency-Key": "file"})
    changed_file["dataset"] = ("dataset.npz", tiny_dataset(count=31), "application/octet-stream")
    assert client.post("/v1/jobs", files=changed_file, headers=alice | {"Idempotency-Key": "file"}).status_code == 409


def test_idempotency_keys_are_per_owner(client, alice, bob):
    mine = submit(client, alice | {"Idempotency-Key": "abc"}).json()
    theirs = submit(client, bob | {"Idempotency-Key": "abc"})
    assert theirs.status_code == 202 and theirs.json()["id"] != mine["id"]


def test_a_failed_dispatch_leaves_nothing_and_can_be_retried(make_client, tmp_path):
    def broker_down(job_id):
        raise ConnectionError("broker down")

    client = make_client(dispatch=broker_down)
    headers = {"Authorization": f"Bearer {new_key(client, 'alice')}", "Idempotency-Key": "abc"}
    response = client.post("/v1/jobs", files=spec_and_files(tmp_path), headers=headers)
    assert response.status_code == 503 and "try again" in response.json()["detail"]
    assert client.get("/v1/jobs", headers=headers).json()["total"] == 0 and upload_dir_is_empty(client)
    client.app.state.dispatch = lambda job_id: None
    assert client.post("/v1/jobs", files=spec_and_files(tmp_path), headers=headers).status_code == 202


# --- listing and reading ------------------------------------------------------------------------------------


def test_list_newest_first_with_pages(client, alice, bob):
    ids = [submit(client, alice).json()["id"] for _ in range(5)]
    submit(client, bob)
    page = client.get("/v1/jobs?limit=2", headers=alice).json()
    assert [j["id"] for j in page["items"]] == ids[:2:-1]
    assert (page["total"], page["limit"], page["offset"], page["next"]) == (5, 2, 0, "/v1/jobs?limit=2&offset=2")
    seen = [j["id"] for j in page["items"]]
    while page["next"]:
        page = client.get(page["next"], headers=alice).json()
        seen += [j["id"] for j in page["items"]]
    assert seen == ids[::-1]


def test_page_size_is_capped(make_client, make_settings):
    client = make_client(make_settings(page_size_max=3))
    headers = {"Authorization": f"Bearer {new_key(client, 'alice')}"}
    for _ in range(4):
        submit(client, headers)
    page = client.get("/v1/jobs?limit=1000", headers=headers).json()
    assert page["limit"] == 3 and len(page["items"]) == 3 and page["next"] == "/v1/jobs?limit=3&offset=3"


@pytest.mark.parametrize("query", ["limit=0", "offset=-1", "limit=ten"])
def test_bad_page_parameters(client, alice, query):
    response = client.get(f"/v1/jobs?{query}", headers=alice)
    assert response.status_code == 422 and isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("job_id", [MISSING_ID, "not-a-job", "..", "1;DROP TABLE jobs"])
def test_unknown_jobs_are_404(client, alice, job_id):
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}", headers=alice).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/artifacts", headers=alice).status_code == 404


def test_another_owner_cannot_see_or_touch_a_job(client, alice, bob, app_session):
    job_id = submit(client, alice).json()["id"]
    finish(app_session, client, job_id)
    for response in (
        client.get(f"/v1/jobs/{job_id}", headers=bob),
        client.delete(f"/v1/jobs/{job_id}", headers=bob),
        client.get(f"/v1/jobs/{job_id}/artifacts", headers=bob),
        client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx", headers=bob),
    ):
        assert response.status_code == 404 and response.json() == {"detail": f"no job {job_id}"}
    assert client.get("/v1/jobs", headers=bob).json()["total"] == 0


def test_progress_and_failure_are_shown(client, alice, app_session):
    job_id = submit(client, alice).json()["id"]
    jobs.claim(session=app_session, job_id=job_id, lease_s=60)
    metrics = EpochMetrics(epoch=1, epochs=2, data_loss=0.3, kl=12.0, kl_weight=0.0, lr=0.001, train_accuracy=0.9,
                           val_accuracy=0.8, sparsity=0.1, compression=1.1, seconds=1.5)
    progress = Progress.of_epoch(Stage.TRAINING, metrics, later_epochs=JobOptions().finetune_epochs)
    jobs.record_progress(session=app_session, job_id=job_id, progress=progress)
    job = client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert job["state"] == "running" and job["started_at"] is not None
    assert Progress.model_validate(job["progress"]) == progress
    assert job["progress"]["eta_seconds"] == 1.5 * (1 + JobOptions().finetune_epochs)
    jobs.finish(session=app_session, job_id=job_id, state=JobState.FAILED, error="training diverged; lower lr")
    job = client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert job["state"] == "failed" and job["error"] == "training diverged; lower lr"


# --- cancelling ---------------------------------------------------------------------------------------------


def test_cancel_a_queued_job(client, alice):
    job_id = submit(client, alice).json()["id"]
    response = client.delete(f"/v1/jobs/{job_id}", headers=alice)
    assert response.status_code == 202
    assert response.json()["state"] == "cancelled" and response.json()["finished_at"] is not None


def test_cancel_a_running_job(client, alice, app_session):
    job_id = submit(client, alice).json()["id"]
    jobs.claim(session=app_session, job_id=job_id, lease_s=60)
    response = client.delete(f"/v1/jobs/{job_id}", headers=alice)
    assert response.status_code == 202
    assert response.json()["state"] == "running" and response.json()["cancel_requested"] is True


def test_cancel_a_finished_job_conflicts(client, alice, app_session):
    job_id = submit(client, alice).json()["id"]
    finish(app_session, client, job_id)
    response = client.delete(f"/v1/jobs/{job_id}", headers=alice)
    assert response.status_code == 409 and "has finished (succeeded)" in response.json()["detail"]


# --- artifacts ----------------------------------------------------------------------------------------------

FILES = {"model.onnx": b"onnx-small", "baseline.onnx": b"onnx-dense", "report.json": b'{"compression": 42}',
         "weights.safetensors": b"st", "training_curves.png": b"\x89PNG"}


def finish(session, client, job_id, files=FILES):
    """What a worker does: run the job, write its artifacts, mark it succeeded."""
    jobs.claim(session=session, job_id=job_id, lease_s=60)
    folder = client.app.state.storage.job_artifact_dir(job_id)
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    (folder / ".model.onnx.partial").write_bytes(b"half")
    (folder / "notes.txt").write_bytes(b"not an artifact")
    jobs.finish(session=session, job_id=job_id, state=JobState.SUCCEEDED, attempt=1)


def test_artifacts_are_listed_and_downloaded(client, alice, app_session):
    job_id = submit(client, alice).json()["id"]
    finish(app_session, client, job_id)
    listing = client.get(f"/v1/jobs/{job_id}/artifacts", headers=alice).json()["items"]
    assert [a["name"] for a in listing] == list(FILES)
    assert {a["name"]: a["bytes"] for a in listing} == {name: len(content) for name, content in FILES.items()}
    for artifact in listing:
        response = client.get(artifact["url"], headers=alice)
        assert response.status_code == 200 and response.content == FILES[artifact["name"]]
    media = {name: client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=alice).headers["content-type"]
             for name in ("model.onnx", "report.json", "training_curves.png")}
    assert media == {"model.onnx": "application/octet-stream", "report.json": "application/json",
                     "training_curves.png": "image/png"}
    disposition = client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx", headers=alice).headers["content-disposition"]
    assert 'filename="model.onnx"' in disposition


@pytest.mark.parametrize(
    "name", ["layer_sparsity.png", "notes.txt", ".model.onnx.partial", "..%2F..%2Fvdc.db", "%2e%2e", "model.onnx%00"]
)
def test_missing_and_forbidden_artifact_names_are_404(client, alice, app_session, name):
    job_id = submit(client, alice).json()["id"]
    finish(app_session, client, job_id)
    response = client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=alice)
    assert response.status_code == 404 and "detail" in response.json()


def test_artifacts_wait_for_success(client, alice, app_session):
    job_id = submit(client, alice).json()["id"]
    for path in (f"/v1/jobs/{job_id}/artifacts", f"/v1/jobs/{job_id}/artifacts/model.onnx"):
        response = client.get(path, headers=alice)
        assert response.status_code == 409
        assert response.json()["detail"] == f"job {job_id} is queued; its artifacts are available once it has succeeded"


# --- operations ---------------------------------------------------------------------------------------------


def test_health_and_readiness(client, app_session):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "checks": {"database": "ok"}, "workers": 0}
    workers.beat(session=app_session, name="vdc0@host", pid=1, started_at=utcnow())
    assert client.get("/readyz").json()["workers"] == 1, "a worker heard from within a lease is alive"


def test_readiness_names_the_dependency_that_is_down(make_client):
    def broker_down():
        raise ConnectionError("redis://secret@host refused")

    response = make_client(broker_check=broker_down).get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"detail": "not ready: broker unavailable",
                               "checks": {"database": "ok", "broker": "unavailable"}}


def test_readiness_fails_without_the_database(client):
    unreachable = create_db_engine("postgresql://vdc@127.0.0.1:1/vdc")  # nothing listens on port 1
    client.app.state.readiness_checks["database"] = partial(ping, unreachable)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["database"] == "unavailable"


def test_metrics(client, alice):
    job_id = submit(client, alice).json()["id"]
    client.get(f"/v1/jobs/{job_id}", headers=alice)
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert 'vdc_http_requests_total{method="POST",route="/v1/jobs",status="202"} 1.0' in text
    assert 'vdc_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0' in text
    assert 'vdc_http_requests_total{method="GET",route="other",status="404"} 1.0' in text
    assert 'vdc_http_request_duration_seconds_count{method="POST",route="/v1/jobs"} 1.0' in text
    assert 'vdc_jobs{state="queued"} 1.0' in text and 'vdc_jobs{state="running"} 0.0' in text


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert "JobRequest" in schema["components"]["schemas"]


# --- error bodies -------------------------------------------------------------------------------------------


def add_failing_route(app: FastAPI, error: Exception) -> None:
    def fail():
        raise error

    app.add_api_route("/fail", fail)


def test_an_unexpected_error_is_a_generic_500_and_is_logged(client, caplog):
    add_failing_route(client.app, RuntimeError("secret internals at /srv/data"))
    response = client.get("/fail")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error; it has been logged"}
    assert "Traceback" in caplog.text and "secret internals" in caplog.text


def test_a_database_outage_is_a_503(client):
    add_failing_route(client.app, OperationalError("SELECT 1", {}, ConnectionRefusedError("db down")))
    response = client.get("/fail")
    assert response.status_code == 503 and response.json() == {"detail": "database unavailable; try again shortly"}


def test_the_stored_job_has_the_internals_the_answer_leaves_out(client, alice, app_session):
    job_id = submit(client, alice | {"Idempotency-Key": "abc"}).json()["id"]
    answer = client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    stored = app_session.get(Job, job_id)
    assert stored.owner == "alice" and stored.idempotency_key == "abc"
    assert not {"owner", "idempotency_key", "lease_expires_at", "dispatched_at", "dispatches"} & set(answer)

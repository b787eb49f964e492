"""Tenant isolation: bob can neither see nor touch alice's jobs, whatever their state and whatever id he tries,
and cannot even tell that they exist; keys are stored hashed and compared in constant time; neither keys nor
uploaded bytes reach the logs."""

import hashlib
import hmac
import io
import json
import logging
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from service.keys import DISPLAY_CHARS
from service.models import ApiKey, Job, utcnow
from service.states import JobState
from service.storage import ARTIFACT_NAMES
from tests.service.conftest import DIGITS_REQUEST, TINY_SPEC, new_key, tiny_dataset, weights_bytes

MISSING_ID = "00000000-0000-4000-8000-000000000000"
STATES = tuple(JobState)
ARTIFACTS = {name: f"{name} of alice's job".encode() for name in ARTIFACT_NAMES}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def set_state(session, job_id, state):
    """Put the job in ``state`` directly in the database, as a worker would leave it."""
    now = utcnow()
    values = {"state": state, "started_at": None if state == "queued" else now}
    if state in ("succeeded", "failed", "cancelled"):
        values["finished_at"] = now
    if state == "failed":
        values["error"] = "training diverged"
    session.execute(update(Job).where(Job.id == job_id).values(**values))
    session.commit()


@pytest.fixture
def alices_jobs(client, alice, app_session):
    """One of alice's jobs in each state, by state; the succeeded one has every artifact, written through
    Storage."""
    ids = {}
    for state in STATES:
        job_id = client.post("/v1/jobs", json=DIGITS_REQUEST, headers=alice).json()["id"]
        if state == "succeeded":
            folder = client.app.state.storage.job_artifact_dir(job_id)
            folder.mkdir(parents=True)
            for name, content in ARTIFACTS.items():
                (folder / name).write_bytes(content)
        set_state(app_session, job_id, state)
        ids[state] = job_id
    return ids


def snapshot(client, app_session, ids):
    """Everything stored about alice's jobs: their rows and their artifacts."""
    query = select(Job).where(Job.id.in_(ids)).execution_options(populate_existing=True)
    rows = {job.id: {c.name: getattr(job, c.name) for c in Job.__table__.columns} for job in app_session.scalars(query)}
    storage = client.app.state.storage
    files = {job_id: {a.name: a.path.read_bytes() for a in storage.list_artifacts(job_id)} for job_id in ids}
    return rows, files


def probes(client, headers, job_id):
    """Every request about one job: read it, cancel it, list its artifacts, download each artifact."""
    path = f"/v1/jobs/{quote(job_id, safe='')}"
    yield client.get(path, headers=headers)
    yield client.delete(path, headers=headers)
    yield client.get(f"{path}/artifacts", headers=headers)
    for name in ARTIFACT_NAMES:
        yield client.get(f"{path}/artifacts/{name}", headers=headers)


def seen(response, job_id):
    """What a caller learns from an answer, with the id it asked about blanked out."""
    headers = sorted((name, value) for name, value in response.headers.items() if name != "content-length")
    return response.status_code, response.text.replace(job_id, "<id>"), headers


# Ids bob might try whatever alice's are: sequential-looking ones, and wildcards in case a lookup used LIKE.
BLIND_GUESSES = ["00000000-0000-4000-8000-000000000001", "1", "2", "%", "_", "*"]


def guesses(job_id):
    """Ids bob might derive from one of alice's: the next one, other cases, prefixes, extensions."""
    following = job_id[:-1] + format((int(job_id[-1], 16) + 1) % 16, "x")
    return [
        following, job_id.upper(), job_id.swapcase(), job_id[:8], job_id[:18], job_id[:-1], job_id + "0",
        job_id + " ", job_id[:8] + "%",
    ]


def assert_like_a_missing_job(client, headers, job_id, missing=None):
    """Every answer about ``job_id`` is the 404 a job that does not exist gets: same status, body and headers.

    ``missing`` is what ``seen`` makes of the answers about ``MISSING_ID``, if already known."""
    missing = missing or [seen(r, MISSING_ID) for r in probes(client, headers, MISSING_ID)]
    answers = list(probes(client, headers, job_id))
    for response in answers:
        assert response.status_code == 404 and response.json() == {"detail": f"no job {job_id}"}, response.text
    assert [seen(r, job_id) for r in answers] == missing


@pytest.mark.parametrize("state", STATES)
def test_another_owner_cannot_tell_a_job_exists_in_any_state(client, alice, bob, alices_jobs, app_session, state):
    ids = list(alices_jobs.values())
    before = snapshot(client, app_session, ids)
    job_id = alices_jobs[state]
    assert_like_a_missing_job(client, bob, job_id)
    listing = client.get("/v1/jobs?limit=100&owner=alice", headers=bob).json()
    assert (listing["items"], listing["total"]) == ([], 0)
    assert snapshot(client, app_session, ids) == before
    mine = client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert (mine["state"], mine["cancel_requested"]) == (state, False)


def test_guessed_ids_find_nothing(client, alice, bob, alices_jobs, app_session):
    ids = list(alices_jobs.values())
    before = snapshot(client, app_session, ids)
    missing = [seen(r, MISSING_ID) for r in probes(client, bob, MISSING_ID)]
    for guess in BLIND_GUESSES + [guess for job_id in ids for guess in guesses(job_id)]:
        assert_like_a_missing_job(client, bob, guess, missing)
    assert snapshot(client, app_session, ids) == before
    assert client.get(f"/v1/jobs/{alices_jobs['queued']}", headers=alice).json()["state"] == "queued"


def test_the_owner_still_has_everything(client, alice, alices_jobs):
    """The control: what bob cannot reach is there for alice."""
    listing = client.get("/v1/jobs", headers=alice).json()
    assert listing["total"] == len(STATES) and {j["id"] for j in listing["items"]} == set(alices_jobs.values())
    succeeded = f"/v1/jobs/{alices_jobs['succeeded']}/artifacts"
    assert [a["name"] for a in client.get(succeeded, headers=alice).json()["items"]] == list(ARTIFACT_NAMES)
    for name, content in ARTIFACTS.items():
        assert client.get(f"{succeeded}/{name}", headers=alice).content == content


def test_each_owner_lists_only_their_own_jobs(client, alice, bob, alices_jobs):
    bobs = client.post("/v1/jobs", json=DIGITS_REQUEST, headers=bob).json()["id"]
    listing = client.get("/v1/jobs?limit=100", headers=bob).json()
    assert [j["id"] for j in listing["items"]] == [bobs] and listing["total"] == 1
    assert bobs not in {j["id"] for j in client.get("/v1/jobs?limit=100", headers=alice).json()["items"]}
    assert_like_a_missing_job(client, alice, bobs)


# --- keys ---------------------------------------------------------------------------------------------------


def test_keys_are_stored_only_as_hashes(client, app_session):
    tokens = [new_key(client, "alice"), new_key(client, "alice"), new_key(client, "bob")]
    rows = app_session.scalars(select(ApiKey)).all()
    assert {row.key_hash for row in rows} == {hashlib.sha256(t.encode()).hexdigest() for t in tokens}
    values = [str(getattr(row, column.name)) for row in rows for column in ApiKey.__table__.columns]
    secrets = [token[DISPLAY_CHARS:] for token in tokens]  # the part not shown in key listings
    assert not [s for s in secrets if any(s in value for value in values)]
    database = Path(make_url(client.app.state.settings.database_url).database)
    stored = b"".join(path.read_bytes() for path in database.parent.glob(f"{database.name}*"))  # with -wal, -journal
    assert stored and not [s for s in secrets if s.encode() in stored]


def test_keys_are_compared_in_constant_time(client, monkeypatch):
    token = new_key(client, "alice")
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert client.get("/v1/jobs", headers=bearer(token)).status_code == 200
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert calls == [(digest, digest)]
    # Its answer decides: a comparison that says "different" refuses a valid key.
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    assert client.get("/v1/jobs", headers=bearer(token)).status_code == 401


# --- logs ---------------------------------------------------------------------------------------------------

MARKER = b"UPLOAD-MARKER-5f2b9e1c"


def with_comment(npz: bytes, comment: bytes) -> bytes:
    """A valid npz that also carries ``comment`` (in the zip's comment, which numpy ignores)."""
    buffer = io.BytesIO(npz)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.comment = comment
    return buffer.getvalue()


def test_keys_and_uploads_stay_out_of_the_logs(make_client, caplog, tmp_path):
    def broker_down(job_id):
        raise ConnectionError("broker down")

    caplog.set_level(logging.DEBUG)
    client = make_client(dispatch=broker_down)
    token = new_key(client, "alice")
    wrong = token[:-6] + ("abcdef" if not token.endswith("abcdef") else "ghijkl")
    request = json.dumps({"model": {"spec": TINY_SPEC}})
    weights = weights_bytes(TINY_SPEC, tmp_path)

    def post(headers, **files):
        parts = {name: (name, content, "application/octet-stream") for name, content in files.items()}
        return client.post("/v1/jobs", files={"request": (None, request, "application/json")} | parts,
                           headers=headers)

    assert post(bearer(token), dataset=MARKER * 100).status_code == 422  # not an npz
    assert post(bearer(token), dataset=tiny_dataset(), weights=MARKER * 100).status_code == 422  # not safetensors
    assert post(bearer(token), dataset=with_comment(tiny_dataset(), MARKER), weights=weights).status_code == 503
    assert post(bearer(wrong), dataset=MARKER * 100).status_code == 401
    assert client.get("/v1/jobs", headers=bearer(wrong)).status_code == 401
    assert client.get(f"/v1/jobs/{MISSING_ID}", headers=bearer(token)).status_code == 404

    assert any(r.name == "service.submission" and r.exc_info for r in caplog.records)  # the logs were captured
    logged = caplog.text + "\n".join(repr(vars(record)) for record in caplog.records)
    for secret in (token, token[DISPLAY_CHARS:], wrong[DISPLAY_CHARS:], MARKER.decode()):
        assert secret not in logged

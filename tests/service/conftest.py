"""Fixtures for the service: settings in a temporary directory, a migrated SQLite database, an app whose
dispatcher only records job ids (no training runs here), API keys, and tiny uploadable inputs."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api.main import create_app
from service.core.config import Settings
from service.db import create_db_engine, create_sessionmaker, upgrade_database
from service.keys import create_api_key
from service.models import JobRequest
from vdcore.spec import build_model
from vdcore.weights import save_weights

# Four features, three classes: small enough to build and check in milliseconds.
TINY_SPEC = {
    "input_shape": [4],
    "num_classes": 3,
    "layers": [{"type": "linear", "out_features": 8}, {"type": "relu"}, {"type": "linear", "out_features": 3}],
}
DIGITS_REQUEST = {"model": {"preset": "lenet-300-100"}, "dataset": {"builtin": "digits"}, "options": {"epochs": 2}}


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings under ``tmp_path``; keyword arguments override (they also win over any VDC_* variable)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": tmp_path, "database_url": f"sqlite:///{tmp_path / 'vdc.db'}"}
        return Settings(**values | overrides)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    """A session on a freshly migrated database, for tests of the store without HTTP."""
    upgrade_database(settings.database_url)
    engine = create_db_engine(settings.database_url)
    with create_sessionmaker(engine)() as session:
        yield session
    engine.dispose()


class Dispatched(list[str]):
    """The dispatcher of the tests: it records the ids it is handed, in order."""

    def __call__(self, job_id: str) -> None:
        self.append(job_id)


@pytest.fixture
def dispatched() -> Dispatched:
    return Dispatched()


@pytest.fixture
def make_client(settings: Settings, dispatched: Dispatched) -> Iterator[Callable[..., TestClient]]:
    """Start an app (and its lifespan: migrations, directories) and return its client; closed at teardown."""
    clients: list[TestClient] = []

    def make(app_settings: Settings | None = None, **app_kwargs: Any) -> TestClient:
        app_kwargs.setdefault("dispatch", dispatched)
        client = TestClient(create_app(app_settings or settings, **app_kwargs), raise_server_exceptions=False)
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def new_key(client: TestClient, owner: str) -> str:
    with client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return create_api_key(session=session, owner=owner, name="test")


@pytest.fixture
def alice(client: TestClient) -> dict[str, str]:
    """Headers that authenticate as the owner ``alice``."""
    return {"Authorization": f"Bearer {new_key(client, 'alice')}"}


@pytest.fixture
def bob(client: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(client, 'bob')}"}


@pytest.fixture
def app_session(client: TestClient) -> Iterator[Session]:
    """A session on the app's own database, to arrange jobs in states only a worker could reach."""
    with client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        yield session


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def tiny_dataset(count: int = 30, features: int = 4, top_label: int = 2) -> bytes:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((count, features)).astype(np.float32)
    y = np.arange(count) % (top_label + 1)
    return npz_bytes(x=x, y=y)


def weights_bytes(spec: dict[str, Any], tmp_path: Path) -> bytes:
    path = tmp_path / "weights-for-upload.safetensors"
    save_weights(build_model(spec), path)
    return path.read_bytes()


def digits_request(**options: Any) -> JobRequest:
    return JobRequest.model_validate(DIGITS_REQUEST | {"options": DIGITS_REQUEST["options"] | options})

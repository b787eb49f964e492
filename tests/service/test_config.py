"""Settings: defaults that run on one machine, paths derived from data_dir, unsafe values refused."""

import pytest
from pydantic import ValidationError

from service.core.config import Settings


def test_paths_derive_from_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("VDC_DATABASE_URL", raising=False)
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path}/vdc.db"
    assert (settings.artifact_dir, settings.upload_dir) == (tmp_path / "artifacts", tmp_path / "uploads")
    assert settings.broker_url == "" and settings.environment == "development"


def test_environment_variables_use_the_vdc_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("VDC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VDC_ARTIFACT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("VDC_MAX_UPLOAD_BYTES", "1024")
    settings = Settings()
    assert settings.upload_dir == tmp_path / "uploads" and settings.artifact_dir == tmp_path / "elsewhere"
    assert settings.max_upload_bytes == 1024


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings(data_dir="data").upload_dir == tmp_path / "data" / "uploads"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused(url):
    with pytest.raises(ValidationError, match="in-memory SQLite"):
        Settings(database_url=url)


def test_production_refuses_placeholder_passwords():
    with pytest.raises(ValidationError, match="VDC_DATABASE_URL uses the placeholder password"):
        Settings(environment="production", database_url="postgresql://vdc:changethis@db/vdc")
    with pytest.raises(ValidationError, match="VDC_BROKER_URL uses the placeholder password"):
        Settings(environment="production", database_url="sqlite:////srv/vdc.db", broker_url="redis://:secret@redis:6379/0")


def test_production_accepts_real_passwords_and_sqlite(tmp_path):
    Settings(environment="production", database_url="postgresql://vdc:Xk2-long-random@db/vdc")
    Settings(environment="production", data_dir=tmp_path)


def test_limits_must_be_positive():
    with pytest.raises(ValidationError, match="max_upload_bytes"):
        Settings(max_upload_bytes=0)


def test_a_garbage_database_url_is_refused():
    with pytest.raises(ValidationError, match="not a database URL"):
        Settings(database_url="not a url")

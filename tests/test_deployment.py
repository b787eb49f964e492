"""The Dockerfile and compose file, read: services, commands, environment and volumes must agree with the code
they start, and what the real run (tests/integration/test_compose.py) cannot show here must hold as written: the
GPU workers' reservation, the torch pin, the user the image runs as."""

import importlib
import re
from pathlib import Path

import pytest
import yaml

from service.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICES = COMPOSE["services"]
APP_SERVICES = ("api", "worker", "gpu-worker")


def test_services_and_their_dependencies():
    assert set(SERVICES) == {"api", "worker", "gpu-worker", "redis", "postgres"}
    for name in APP_SERVICES:
        assert set(SERVICES[name]["depends_on"]) == {"redis", "postgres"}
        assert all(dep["condition"] == "service_healthy" for dep in SERVICES[name]["depends_on"].values())
    for name in ("api", "redis", "postgres"):
        assert "healthcheck" in SERVICES[name], f"{name} needs a health check"
    assert "/readyz" in " ".join(SERVICES["api"]["healthcheck"]["test"])


def test_environment_names_real_settings_and_points_at_the_compose_servers():
    fields = {f"VDC_{name.upper()}" for name in Settings.model_fields}
    for name in APP_SERVICES:
        env = SERVICES[name]["environment"]
        assert set(env) <= fields, f"{name} sets unknown settings {set(env) - fields}"
        assert env["VDC_BROKER_URL"].startswith("redis://redis:6379")
        assert "@postgres:5432/" in env["VDC_DATABASE_URL"]
        assert env["VDC_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["VDC_ENVIRONMENT"] == "production"
    assert SERVICES["postgres"]["environment"]["POSTGRES_USER"] in SERVICES["api"]["environment"]["VDC_DATABASE_URL"]


def test_api_and_workers_share_the_data_volume_at_the_data_dir():
    for name in APP_SERVICES:
        data_dir = SERVICES[name]["environment"]["VDC_DATA_DIR"]
        assert f"vdc-data:{data_dir}" in SERVICES[name]["volumes"]
    assert set(COMPOSE["volumes"]) >= {"vdc-data", "postgres-data", "redis-data"}


def test_commands_start_code_that_exists():
    api = SERVICES["api"]["command"]
    module, attribute = api[api.index("uvicorn") + 1].split(":")
    assert importlib.util.find_spec(module) is not None and attribute == "app"
    assert api[api.index("--port") + 1] == "8000" and "${VDC_PORT:-8000}:8000" in SERVICES["api"]["ports"]
    assert re.search(r"EXPOSE 8000\b", DOCKERFILE)
    worker = SERVICES["worker"]["command"]
    celery_app = importlib.import_module(worker[worker.index("-A") + 1]).app
    celery_app.loader.import_default_modules()
    assert "vdc.compress_job" in celery_app.tasks
    assert worker[worker.index("--concurrency") + 1] == "1", "one job per worker process; scale with --scale"


def test_gpu_workers_reserve_a_gpu_under_a_profile_and_cpu_workers_do_not():
    gpu = SERVICES["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["build"]["args"]["TORCH_INDEX"] == "", "the GPU image needs the CUDA build of torch"
    assert "deploy" not in SERVICES["worker"] and "profiles" not in SERVICES["worker"]
    assert "container_name" not in SERVICES["worker"], "a fixed name would break --scale worker=N"


@pytest.mark.parametrize("name", ["redis", "postgres"])
def test_servers_keep_their_data_in_volumes(name):
    assert any(volume.startswith(f"{name}-data:") for volume in SERVICES[name]["volumes"])


def test_image_installs_pinned_torch_first_and_runs_as_non_root():
    torch_at = DOCKERFILE.index("torch==2.13.0")
    project_at = DOCKERFILE.index("pip install -r /tmp/requirements.txt")
    assert torch_at < project_at
    assert DOCKERFILE.startswith("# ") and "FROM python:3.11" in DOCKERFILE
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert users, "the image must switch to a non-root user"
    user = users[-1].split(":")[0]  # the last USER is the one the container runs as; USER 0:0 is root too
    assert user not in ("root", "0")
    created = re.search(rf"useradd\b[^\n]*?(?:--uid\s+(\d+)\b[^\n]*)?\b{user}\b", DOCKERFILE)
    assert created, f"USER {user} is never created"
    assert created.group(1) != "0", "a user with uid 0 is root under another name"
    assert re.search(rf"chown\s+{user}(:\S+)?\s+/data\b", DOCKERFILE), "the user must be able to write /data"
    assert "VDC_DATA_DIR=/data" in DOCKERFILE


def test_the_image_can_build_the_cpu_kernel_and_ships_its_source():
    """vdcore compiles its CPU kernel with g++ on first use; the image installs g++ and builds it ahead."""
    assert re.search(r"apt-get install[^\n]*\bg\+\+", DOCKERFILE)
    warm = re.search(r"^RUN python -c .*vdcore\.cpu_kernel.*load\(\)", DOCKERFILE, re.MULTILINE)
    assert warm and warm.start() > DOCKERFILE.index("USER vdc"), "built as the user whose cache the worker reads"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"csrc/*.cpp"' in pyproject and '"ninja' in pyproject
    from vdcore import cpu_kernel

    assert cpu_kernel.SOURCE.is_file()

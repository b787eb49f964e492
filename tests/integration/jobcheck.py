"""The user's path over HTTP, shared by the integration tests: submit, watch, download, check in onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.conftest import wait_for
from vdcore.data import load_digits
from vdcore.export import onnx_session

REQUEST = {
    "model": {"preset": "lenet-300-100"},
    "dataset": {"builtin": "digits"},
    "options": {"epochs": 6, "pretrain_epochs": 3, "batch_size": 50, "lr": 0.003, "curve_exports": 0},
}


def submit_and_check(base: str, auth: dict[str, str], tmp_path: Path) -> dict:
    """Run a digits job to success and check the downloaded model against its own report; return the report."""
    response = httpx.post(f"{base}/v1/jobs", headers=auth, files={"request": (None, json.dumps(REQUEST))})
    assert response.status_code == 202, response.text
    job_url = f"{base}{response.json()['links']['self']}"

    def finished() -> dict | None:
        job = httpx.get(job_url, headers=auth).json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    job = wait_for(finished, 240, "the job to finish")
    assert job["state"] == "succeeded", job["error"]

    report = httpx.get(f"{job_url}/artifacts/report.json", headers=auth).json()
    model = httpx.get(f"{job_url}/artifacts/model.onnx", headers=auth)
    assert model.status_code == 200 and len(model.content) == report["files"]["model.onnx"]["bytes"]
    path = tmp_path / "model.onnx"
    path.write_bytes(model.content)
    data = load_digits()
    logits = onnx_session(path).run(None, {"input": data.x_val.numpy()})[0]
    accuracy = float(np.mean(logits.argmax(1) == data.y_val.numpy()))
    assert accuracy == pytest.approx(report["accuracy"]["after"], abs=1e-9)
    assert report["compression"] > 1.5
    assert len(model.content) < report["files"]["baseline.onnx"]["bytes"]
    return report

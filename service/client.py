"""A small client of the REST API, for the ``vdc`` command: the same calls a user would make with curl."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from vdcore.files import atomic_path

BUSY_RETRIES = 5  # a read the server refused as busy (503 with Retry-After) is tried again this often
LONGEST_RETRY_AFTER_S = 30.0


class ApiError(RuntimeError):
    """The server refused a call; the message is the server's own explanation."""


class Client:
    def __init__(self, server: str, key: str, timeout: float = 60) -> None:
        self.http = httpx.Client(
            base_url=server.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self._send(method, url, **kwargs)
        for _ in range(BUSY_RETRIES):
            retry_after = response.headers.get("retry-after", "")
            if method != "GET" or response.status_code != 503 or not retry_after.isdigit():
                break
            time.sleep(min(float(retry_after), LONGEST_RETRY_AFTER_S))  # an overloaded server asked for a pause
            response = self._send(method, url, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(f"{response.status_code}: {detail}")
        return response

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            raise ApiError(f"cannot reach {self.http.base_url}: {error}") from None

    def submit(self, request: dict[str, Any], weights: str | None = None, dataset: str | None = None,
               idempotency_key: str | None = None, model: str | None = None) -> dict[str, Any]:
        """POST a job with its files (safetensors ``weights``, an npz ``dataset``, an ONNX ``model``); returns the
        job as the server describes it."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with ExitStack() as files_open:
            files: dict[str, Any] = {"request": (None, json.dumps(request), "application/json")}
            for part, path in (("weights", weights), ("dataset", dataset), ("model", model)):
                if path is not None:
                    files[part] = (Path(path).name, files_open.enter_context(open(path, "rb")))
            return self._call("POST", "/v1/jobs", files=files, headers=headers).json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, limit: int = 20) -> dict[str, Any]:
        return self._call("GET", "/v1/jobs", params={"limit": limit}).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{job_id}").json()

    def download(self, job_id: str, out_dir: Path, names: list[str] | None = None) -> list[Path]:
        """Save the job's artifacts (all, or the ``names`` given) into ``out_dir``, each complete or not at all."""
        out_dir.mkdir(parents=True, exist_ok=True)
        listed = [a["name"] for a in self._call("GET", f"/v1/jobs/{job_id}/artifacts").json()["items"]]
        saved = []
        for name in names or listed:
            target = out_dir / name
            with self.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
                if response.status_code >= 400:
                    raise ApiError(f"{response.status_code}: cannot download {name}")
                with atomic_path(target) as partial, open(partial, "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
            saved.append(target)
        return saved

"""List and download a finished job's artifacts."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import StorageDep, SucceededJob
from service.api.errors import error_responses
from service.errors import NotFound
from service.models import ArtifactList, ArtifactPublic
from service.storage import ARTIFACT_NAMES, media_type

router = APIRouter(
    prefix="/v1/jobs/{job_id}/artifacts", tags=["artifacts"], responses=error_responses(401, 404, 409, 422, 503)
)


@router.get("")
async def list_artifacts(job: SucceededJob, storage: StorageDep) -> ArtifactList:
    found = await run_in_threadpool(storage.list_artifacts, job.id)  # the file system may be a slow mount
    return ArtifactList(
        items=[ArtifactPublic(name=a.name, bytes=a.bytes, url=f"/v1/jobs/{job.id}/artifacts/{a.name}") for a in found]
    )


@router.get("/{name}", response_class=FileResponse, responses={200: {"content": {"application/octet-stream": {}}}})
async def download_artifact(name: str, job: SucceededJob, storage: StorageDep) -> FileResponse:
    artifact = await run_in_threadpool(storage.artifact, job.id, name)
    if artifact is None:
        raise NotFound(f"job {job.id} has no artifact {name!r}; artifacts are named {list(ARTIFACT_NAMES)}")
    return FileResponse(artifact.path, media_type=media_type(name), filename=name)

"""The body of ``POST /v1/jobs``, read within size limits: a JSON ``JobRequest``, or multipart with a JSON part
``request`` and optional files ``weights`` (safetensors), ``dataset`` (npz) and ``model`` (ONNX).

The body is read here, after authentication, rather than by FastAPI's form parameters: those would take the
whole upload before the API key is even looked at.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message

from service.api.errors import describe_errors
from service.core.config import Settings
from service.errors import InvalidJob, ServiceError, TooLarge, UnsupportedMediaType
from service.models import JobRequest
from service.storage import UPLOADS

# Room for multipart boundaries and part headers on top of the files and the JSON.
MULTIPART_OVERHEAD_BYTES = 64 << 10
PARTS = ("request", *UPLOADS)

# The body as OpenAPI describes it (FastAPI cannot infer it, since the route reads the body itself).
OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["request"],
                    "properties": {
                        "request": {"type": "string", "description": "the JobRequest, as JSON"},
                        "weights": {"type": "string", "format": "binary", "description": "safetensors weights"},
                        "dataset": {"type": "string", "format": "binary", "description": "npz: x, y[, x_val, y_val]"},
                        "model": {"type": "string", "format": "binary", "description": "the network as ONNX"},
                    },
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
        },
    }
}


@dataclass(frozen=True)
class Submission:
    request: JobRequest
    files: dict[str, BinaryIO]


def parse_job_request(raw: str | bytes) -> JobRequest:
    try:
        return JobRequest.model_validate_json(raw)
    except ValidationError as error:
        raise InvalidJob(describe_errors(error.errors(), root="request")) from None


def _limited(request: Request, limit: int, what: str) -> Request:
    """The same request, refusing (``TooLarge``) a body over ``limit`` bytes: at once when Content-Length says so,
    else as soon as that much has arrived."""
    message = f"the request is larger than the {limit:,} bytes allowed for {what}"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(message)
    received = 0

    async def receive() -> Message:
        nonlocal received
        chunk = await request.receive()
        received += len(chunk.get("body", b""))
        if received > limit:
            raise TooLarge(message)
        return chunk

    return Request(request.scope, receive)


async def _read_form(request: Request, settings: Settings) -> FormData:
    """The parts, files spooled to temporary files. Starlette's 400 for a body it cannot parse says little
    ("Invalid multipart data.", a size in KB): the answer names the parser's reason and the limit in bytes."""
    limit = settings.max_upload_bytes + settings.max_json_bytes + MULTIPART_OVERHEAD_BYTES
    limited = _limited(request, limit, "a job and its uploads")
    try:
        return await limited.form(max_files=len(PARTS), max_fields=len(PARTS), max_part_size=settings.max_json_bytes)
    except HTTPException as error:
        if "exceeded maximum size" in str(error.detail):
            raise TooLarge(
                f"a part without a filename is larger than the {settings.max_json_bytes:,} bytes allowed: send "
                "files as files (with curl: -F dataset=@path)"
            ) from None
        cause = error.__context__.__cause__ if error.__context__ is not None else None
        reason = str(error.detail).rstrip(".") + (f": {cause}" if cause is not None else "")
        raise ServiceError(
            f"cannot read the multipart/form-data body: {reason}. Send a part 'request' (the job as JSON) and "
            "optionally the files 'weights', 'dataset' and 'model' (with curl: -F request=@job.json -F model=@net.onnx)"
        ) from None


async def _read_json_body(request: Request, settings: Settings) -> Submission:
    body = await _limited(request, settings.max_json_bytes, "a JSON job request").body()
    return Submission(parse_job_request(body), {})


async def read_submission(request: Request) -> AsyncIterator[Submission]:
    """The job request and its uploaded files (spooled to temporary files), closed when the request ends."""
    settings: Settings = request.app.state.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        yield await _read_json_body(request, settings)
        return
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            f"unsupported Content-Type {content_type or '(none)'}: send multipart/form-data (a 'request' JSON "
            "part, optional 'weights', 'dataset' and 'model' files) or application/json"
        )
    form = await _read_form(request, settings)
    try:
        parts: dict[str, str | UploadFile] = {}
        for name, value in form.multi_items():
            if name not in PARTS:
                raise InvalidJob(f"unexpected part {name!r}; the parts are {list(PARTS)}")
            if name in parts:
                raise InvalidJob(f"the part {name!r} was sent more than once")
            parts[name] = value
        raw = parts.pop("request", None)
        if raw is None:
            raise InvalidJob("the 'request' part is missing: send the job as JSON in a part named 'request'")
        if isinstance(raw, UploadFile):  # curl -F request=@job.json sends it as a file
            raw = await raw.read(settings.max_json_bytes + 1)
            if len(raw) > settings.max_json_bytes:
                raise TooLarge(f"the 'request' part is larger than the {settings.max_json_bytes:,} bytes allowed")
        files = {}
        for name, value in parts.items():
            if not isinstance(value, UploadFile):
                raise InvalidJob(f"the part {name!r} must be a file (with curl: -F {name}=@path)")
            files[name] = value.file
        yield Submission(parse_job_request(raw), files)
    finally:
        await form.close()

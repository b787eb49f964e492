"""A corpus of malformed requests: each one must get a 4xx whose ``detail`` says what is wrong, never a 5xx or a
hang, and leave the service healthy with nothing stored and nothing dispatched.

Every case is one row of ``CASES``: an id, how to send it (a function of ``Env``), the status it must get and a
substring its ``detail`` must contain. A new malformed input is one new row.
"""

from __future__ import annotations

import io
import json
import math
import struct
import threading
import tracemalloc
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.models import Job, utcnow
from tests.service.conftest import DIGITS_REQUEST, TINY_SPEC, new_key, npz_bytes, tiny_dataset, weights_bytes

MAX_JSON_BYTES = 200_000  # room for 100,000 nested brackets, so the nesting, not the size, is what is refused
MAX_UPLOAD_BYTES = 1 << 20
MAX_DATASET_BYTES = 8 << 20  # decompressed; the bomb below inflates to 8 times this
TIMEOUT_S = 30.0
MISSING_ID = "00000000-0000-4000-8000-000000000000"
IMAGE_SPEC = {
    "input_shape": [1, 8, 8], "num_classes": 3,
    "layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3}, {"type": "flatten"},
               {"type": "linear", "out_features": 3}],
}


@dataclass
class Env:
    """A running app with small limits, an API key, and a place for files."""

    client: TestClient
    headers: dict[str, str]
    tmp_path: Path
    dispatched: list[str]
    job_id: str = ""

    def post(self, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return self.client.post("/v1/jobs", headers=self.headers | (headers or {}), **kwargs)

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path, headers=self.headers)

    def weights(self, spec: dict[str, Any] = TINY_SPEC) -> bytes:
        return weights_bytes(spec, self.tmp_path)

    def add_succeeded_job(self) -> None:
        """A job that has finished with an artifact, as a worker would leave it; a file beside the data."""
        self.job_id = self.post(json=DIGITS_REQUEST).json()["id"]
        folder = self.client.app.state.storage.job_artifact_dir(self.job_id)  # type: ignore[attr-defined]
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"onnx")
        with self.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            finished = {"state": "succeeded", "started_at": utcnow(), "finished_at": utcnow()}
            session.execute(update(Job).where(Job.id == self.job_id).values(**finished))
            session.commit()
        (self.tmp_path / "secret.txt").write_text("not for download")

    def raw_get(self, raw_path: bytes) -> httpx.Response:
        """A GET whose path reaches the app byte for byte, as uvicorn passes it on (httpx would first resolve
        '..' segments, so a literal '..' never leaves TestClient)."""
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": unquote(raw_path.decode("ascii")), "raw_path": raw_path, "root_path": "", "query_string": b"",
            "headers": [(b"host", b"testserver"), *((k.lower().encode(), v.encode()) for k, v in self.headers.items())],
            "client": ("testclient", 50000), "server": ("testserver", 80),
        }
        sent: list[dict[str, Any]] = []
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            message = {"type": "http.disconnect"} if received else {"type": "http.request", "body": b""}
            received = True
            return message

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        self.client.portal.call(self.client.app, scope, receive, send)  # type: ignore[union-attr]
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return httpx.Response(start["status"], headers=start["headers"], content=body)


@dataclass(frozen=True)
class Case:
    id: str
    send: Callable[[Env], httpx.Response]
    status: int
    message: str
    needs_job: bool = False  # a succeeded job of alice's exists before the request, at ``env.job_id``


# --- building malformed inputs ------------------------------------------------------------------------------


def multipart(request: Any = None, **files: bytes) -> dict[str, Any]:
    """Parts for ``files=``: the request as a JSON field (unless None) and each file as an upload."""
    parts = {} if request is None else {"request": (None, json.dumps(request), "application/json")}
    return parts | {name: (f"{name}.bin", content, "application/octet-stream") for name, content in files.items()}


def with_dataset(
    dataset: bytes | Callable[[], bytes], spec: dict[str, Any] = TINY_SPEC
) -> Callable[[Env], httpx.Response]:
    """A spec job with an uploaded dataset; a large one is given as a function, built only when its case runs."""

    def send(env: Env) -> httpx.Response:
        content = dataset() if callable(dataset) else dataset
        return env.post(files=multipart({"model": {"spec": spec}}, dataset=content))

    return send


def with_weights(weights: bytes | Callable[[Env], bytes]) -> Callable[[Env], httpx.Response]:
    def send(env: Env) -> httpx.Response:
        content = weights(env) if callable(weights) else weights
        return env.post(files=multipart({"model": {"spec": TINY_SPEC}}, weights=content, dataset=tiny_dataset()))

    return send


def arrays(count: int = 30, **changes: Any) -> bytes:
    """A tiny dataset (4 features, labels 0..2) with arrays replaced or added."""
    rng = np.random.default_rng(0)
    base = {"x": rng.standard_normal((count, 4)).astype(np.float32), "y": np.arange(count) % 3}
    return npz_bytes(**{k: v for k, v in (base | changes).items() if v is not None})


def with_value(x: float) -> bytes:
    values = np.ones((30, 4), dtype=np.float32)
    values[3, 2] = x
    return arrays(x=values)


def npy(shape: tuple[int, ...], descr: str = "<f4", data: bytes = b"") -> bytes:
    """An .npy member: a header declaring ``shape`` and ``descr``, then ``data`` (whatever it really holds)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue() + data


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return out.getvalue()


def write_zeros(member: BinaryIO, size: int) -> None:
    """``size`` zero bytes, in 1 MiB chunks, so that a test never holds what a bomb inflates to."""
    chunk = bytes(1 << 20)
    for start in range(0, size, len(chunk)):
        member.write(chunk[: min(len(chunk), size - start)])


@cache
def zip_bomb(unpacked_bytes: int = 64 << 20) -> bytes:
    """A small npz (about 64 KB) whose x and y are valid arrays of zeros inflating to ``unpacked_bytes``."""
    count = unpacked_bytes // (4 * 4 + 8)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, shape, descr, itemsize in (("x.npy", (count, 4), "<f4", 4), ("y.npy", (count,), "<i8", 8)):
            with archive.open(name, "w", force_zip64=True) as member:
                member.write(npy(shape, descr))
                write_zeros(member, math.prod(shape) * itemsize)
    return out.getvalue()


def lying_member(declared: tuple[int, ...], actual_bytes: int) -> bytes:
    """An npz whose x header declares ``declared`` but whose member holds ``actual_bytes`` of zeros."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(npy(declared))
            write_zeros(member, actual_bytes)
        archive.writestr("y.npy", npy((30,), "<i8", bytes(30 * 8)))
    return out.getvalue()


def flip_middle_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def safetensors(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length, the JSON header, the data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def tensor_entry(dtype: str = "F32", shape: list[int] | None = None, offsets: list[int] | None = None) -> dict:
    shape = [8, 4] if shape is None else shape
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets or [0, 4 * 8 * 4]}


def raw_multipart(*parts: tuple[bytes, bytes], boundary: bytes = b"corpus-boundary") -> Callable[[Env], httpx.Response]:
    """A multipart body built by hand from (Content-Disposition parameters, content) pairs, so names and filenames
    can hold bytes no client library would send."""
    body = b"".join(
        b"--" + boundary + b"\r\nContent-Disposition: form-data; " + params + b"\r\n\r\n" + content + b"\r\n"
        for params, content in parts
    ) + b"--" + boundary + b"--\r\n"
    content_type = b"multipart/form-data; boundary=" + boundary
    return lambda env: env.post(content=body, headers={"Content-Type": content_type.decode()})


def json_body(body: bytes | str) -> Callable[[Env], httpx.Response]:
    raw = body.encode() if isinstance(body, str) else body
    return lambda env: env.post(content=raw, headers={"Content-Type": "application/json"})


def json_options(options_text: str) -> Callable[[Env], httpx.Response]:
    """The digits job with options written as JSON text, which may hold what ``json.dumps`` would not."""
    return json_body('{"model": {"preset": "lenet-300-100"}, "dataset": {"builtin": "digits"}, "options": '
                     + options_text + "}")


def request(**changes: Any) -> Callable[[Env], httpx.Response]:
    """The digits job with top-level fields replaced."""
    return lambda env: env.post(json=DIGITS_REQUEST | changes)


def options(**values: Any) -> Callable[[Env], httpx.Response]:
    return request(options=values)


def spec(**changes: Any) -> Callable[[Env], httpx.Response]:
    return request(model={"spec": {"input_shape": [1, 8, 8], "num_classes": 10} | changes})


def layers(*layer_list: dict[str, Any]) -> Callable[[Env], httpx.Response]:
    return spec(layers=[{"type": "flatten"}, *layer_list, {"type": "linear", "out_features": 10}])


def get(path: str | Callable[[Env], str]) -> Callable[[Env], httpx.Response]:
    return lambda env: env.get(path(env) if callable(path) else path)


def artifact(case_id: str, name: str, status: int, message: str, raw: bool = False) -> Case:
    """A request for the artifact ``name`` (URL-encoded as given) of a job that has succeeded."""
    if raw:
        return Case(case_id, lambda env: env.raw_get(f"/v1/jobs/{env.job_id}/artifacts/{name}".encode()), status,
                    message, needs_job=True)
    return Case(case_id, get(lambda env: f"/v1/jobs/{env.job_id}/artifacts/{name}"), status, message, needs_job=True)


UNREADABLE_NPZ = "not a readable .npz file"
UNREADABLE_WEIGHTS = "not a readable safetensors file"

CASES = [
    # --- npz files that are not npz files ---
    Case("npz-empty-file", with_dataset(b""), 422, UNREADABLE_NPZ),
    Case("npz-truncated-half", with_dataset(tiny_dataset()[: len(tiny_dataset()) // 2]), 422, UNREADABLE_NPZ),
    Case("npz-truncated-directory", with_dataset(tiny_dataset()[:-10]), 422, UNREADABLE_NPZ),
    Case("npz-corrupt-data", with_dataset(flip_middle_byte(tiny_dataset())), 422, "Bad CRC-32"),
    Case("npz-member-not-npy", with_dataset(zipped({"x.npy": b"junk" * 10, "y.npy": b"junk"})), 422, UNREADABLE_NPZ),
    Case("npz-header-too-long", with_dataset(zipped({"x.npy": npy((30, 4))[:8] + b"\xff\xff" + b" " * 100})),
         422, UNREADABLE_NPZ),
    Case("npz-pickled-object-x", with_dataset(arrays(x=np.array([{"a": 1}] * 30, dtype=object))), 422,
         "holds Python objects"),
    Case("npz-pickled-object-y", with_dataset(arrays(y=np.array([None] * 30, dtype=object))), 422,
         "holds Python objects"),
    Case("npz-unexpected-array", with_dataset(arrays(z=np.zeros(3))), 422, "unexpected array(s) ['z']"),
    Case("npz-no-arrays", with_dataset(zipped({})), 422, "needs an array named 'x'"),
    Case("npz-no-y", with_dataset(arrays(y=None)), 422, "needs an array named 'y'"),
    # --- values ---
    Case("x-nan", with_dataset(with_value(np.nan)), 422, "1 NaN or infinite value(s)"),
    Case("x-inf", with_dataset(with_value(np.inf)), 422, "1 NaN or infinite value(s)"),
    Case("x-minus-inf", with_dataset(with_value(-np.inf)), 422, "1 NaN or infinite value(s)"),
    Case("x-overflows-float32", with_dataset(arrays(x=np.full((30, 4), 1e300))), 422, "NaN or infinite"),
    Case("x-val-nan", with_dataset(arrays(x_val=np.full((5, 4), np.nan, np.float32), y_val=np.zeros(5, int))),
         422, "'x_val' holds 20 NaN"),
    Case("x-test-nan", with_dataset(arrays(x_test=np.full((5, 4), np.nan, np.float32), y_test=np.zeros(5, int))),
         422, "'x_test' holds 20 NaN"),
    Case("test-labels-out-of-range", with_dataset(arrays(x_test=np.ones((2, 4), np.float32), y_test=np.array([0, 7]))),
         422, "'y_test' holds labels from 0 to 7"),
    Case("x-strings", with_dataset(arrays(x=np.array([["a"] * 4] * 30))), 422, "'x' must hold real numbers"),
    Case("x-complex", with_dataset(arrays(x=np.ones((30, 4), np.complex64))), 422, "'x' must hold real numbers"),
    Case("x-booleans", with_dataset(arrays(x=np.ones((30, 4), bool))), 422, "'x' must hold real numbers"),
    Case("x-timedeltas", with_dataset(arrays(x=np.ones((30, 4), "m8[s]"))), 422, "'x' must hold real numbers"),
    Case("labels-out-of-range", with_dataset(arrays(y=np.arange(30))), 422, "labels must lie in 0..2"),
    Case("labels-negative", with_dataset(arrays(y=-(np.arange(30) % 3))), 422, "labels must lie in 0..2"),
    Case("labels-fractional", with_dataset(arrays(y=np.full(30, 0.5))), 422, "non-integer values"),
    Case("labels-nan", with_dataset(arrays(y=np.full(30, np.nan))), 422, "non-integer values"),
    Case("labels-strings", with_dataset(arrays(y=np.array(["cat"] * 30))), 422, "must hold integer class indices"),
    Case("labels-booleans", with_dataset(arrays(y=np.ones(30, bool))), 422, "must hold integer class indices"),
    Case("labels-complex", with_dataset(arrays(y=np.ones(30, complex))), 422, "must hold integer class indices"),
    Case("labels-timedeltas", with_dataset(arrays(y=np.ones(30, "m8[s]"))), 422, "must hold integer class indices"),
    Case("labels-2d", with_dataset(arrays(y=np.zeros((30, 3), int))), 422, "must be a 1-d array of 30"),
    # --- shapes and sizes ---
    Case("x-too-many-features", with_dataset(arrays(x=np.ones((30, 5), np.float32))), 422, "'x' has shape [30, 5]"),
    Case("x-3d", with_dataset(arrays(x=np.ones((30, 2, 3), np.float32))), 422, "'x' has shape [30, 2, 3]"),
    Case("x-scalar", with_dataset(arrays(x=np.float32(1))), 422, "'x' has shape []"),
    Case("x-image-for-flat-model", with_dataset(arrays(x=np.ones((30, 1, 8, 8)))), 422, "the model takes"),
    Case("x-flat-for-image-model", with_dataset(arrays(x=np.ones((30, 65))), IMAGE_SPEC), 422, "[N, 1, 8, 8]"),
    Case("x-y-lengths-differ", with_dataset(arrays(y=np.zeros(20, int))), 422, "1-d array of 30 class indices"),
    Case("x-val-without-y-val", with_dataset(arrays(x_val=np.ones((5, 4)))), 422, "give both 'x_val' and 'y_val'"),
    Case("y-test-without-x-test", with_dataset(arrays(y_test=np.ones(5, int))), 422, "give both 'x_test' and 'y_test'"),
    Case("dataset-empty", with_dataset(arrays(count=0)), 422, "'x' holds no examples"),
    Case("npz-terabyte-x", with_dataset(zipped({"x.npy": npy((1 << 38, 4)), "y.npy": npy((30,), "<i8")})),
         413, "the arrays would take 4,398,046,511,344 bytes once loaded"),
    Case("npz-terabyte-y", with_dataset(zipped({"x.npy": npy((30, 4)), "y.npy": npy((1 << 40,), "<i8")})),
         413, "the arrays would take 8,796,093,022,688 bytes once loaded"),
    Case("npz-exabyte-dtype", with_dataset(zipped({"x.npy": npy((1 << 20, 1 << 20), "<V1073741824")})),
         413, "the arrays would take 1,180,591,620,717,411,303,424 bytes once loaded"),
    Case("npz-negative-shape", with_dataset(zipped({"x.npy": npy((-30, 4)), "y.npy": npy((30,), "<i8")})),
         422, "array 'x' declares shape [-30, 4]"),
    # A negative size must not offset a terabyte elsewhere in the sum of declared sizes.
    Case("npz-negative-shape-hides-terabytes",
         with_dataset(zipped({"y.npy": npy((1 << 40,), "<i8"), "x.npy": npy((-(1 << 40), 4))})),
         422, "array 'x' declares shape [-1099511627776, 4]"),
    Case("npz-bomb", with_dataset(zip_bomb), 413, f"more than the {MAX_DATASET_BYTES:,} allowed"),
    Case("npz-header-smaller-than-member", with_dataset(partial(lying_member, (30, 4), 64 << 20)), 422,
         "array 'x' declares shape [30, 4] of float32 (480 bytes) but its file holds 67,108,864 bytes"),
    Case("npz-header-larger-than-member", with_dataset(lying_member((300_000, 4), 480)), 422,
         "array 'x' declares shape [300000, 4] of float32 (4,800,000 bytes) but its file holds 480 bytes"),
    # --- safetensors ---
    Case("weights-empty", with_weights(b""), 422, UNREADABLE_WEIGHTS),
    Case("weights-junk", with_weights(b"junk"), 422, UNREADABLE_WEIGHTS),
    Case("weights-truncated", with_weights(lambda env: env.weights()[:-10]), 422, UNREADABLE_WEIGHTS),
    Case("weights-header-longer-than-file", with_weights(safetensors({}, length=1 << 20)), 422, UNREADABLE_WEIGHTS),
    Case("weights-header-length-absurd", with_weights(safetensors({}, length=(1 << 64) - 1)), 422,
         UNREADABLE_WEIGHTS),
    # Parsing a header takes many times its size in memory: one longer than the model needs is not parsed.
    Case("weights-header-too-long", with_weights(safetensors({"__metadata__": {"pad": "x" * 100_000}})), 422,
         "its header declares 100,029 bytes, more than the 69,632 that 4 tensors need"),
    Case("weights-header-not-json", with_weights(safetensors(b"not json at all")), 422, UNREADABLE_WEIGHTS),
    Case("weights-header-not-utf8", with_weights(safetensors(b'{"\xff\xfe": 1}')), 422, UNREADABLE_WEIGHTS),
    Case("weights-header-a-list", with_weights(safetensors([1, 2])), 422, UNREADABLE_WEIGHTS),
    Case("weights-offsets-beyond-file", with_weights(safetensors({"0.weight": tensor_entry()})), 422,
         UNREADABLE_WEIGHTS),
    Case("weights-offsets-reversed", with_weights(safetensors({"0.weight": tensor_entry(offsets=[128, 0])},
                                                              bytes(128))), 422, UNREADABLE_WEIGHTS),
    Case("weights-dtype-unknown", with_weights(safetensors({"0.weight": tensor_entry("F99")}, bytes(128))), 422,
         UNREADABLE_WEIGHTS),
    Case("weights-shape-overflow", with_weights(safetensors(
        {"0.weight": tensor_entry(shape=[1 << 62, 1 << 62, 16])}, bytes(128))), 422, UNREADABLE_WEIGHTS),
    Case("weights-integer-dtype", with_weights(safetensors({"0.weight": tensor_entry("I32")}, bytes(128))), 422,
         "'0.weight' holds I32, the model needs floating-point values"),
    Case("weights-other-model", with_weights(lambda env: env.weights(IMAGE_SPEC)), 422,
         "the weights do not fit the model"),
    # --- content types and bodies ---
    Case("content-type-text", lambda env: env.post(content=b"{}", headers={"Content-Type": "text/plain"}), 415,
         "unsupported Content-Type text/plain"),
    Case("content-type-none", lambda env: env.post(content=b"{}"), 415, "unsupported Content-Type (none)"),
    Case("content-type-xml", lambda env: env.post(content=b"<job/>", headers={"Content-Type": "application/xml"}),
         415, "send multipart/form-data"),
    Case("multipart-without-boundary",
         lambda env: env.post(content=b"--x\r\n\r\n--x--", headers={"Content-Type": "multipart/form-data"}),
         400, "cannot read the multipart/form-data body: Missing boundary in multipart"),
    Case("multipart-wrong-boundary",
         lambda env: env.post(content=b"--x\r\nContent-Disposition: form-data; name=request\r\n\r\n{}\r\n--x--\r\n",
                              headers={"Content-Type": "multipart/form-data; boundary=y"}),
         400, "Invalid multipart data: Expected boundary character"),
    Case("multipart-garbled-part-header", raw_multipart((b'name="request"\r\nbroken header', b"{}")), 400,
         "Found invalid character"),
    Case("json-oversized", json_body(b'{"model": {"preset": "' + b"a" * MAX_JSON_BYTES + b'"}}'), 413,
         f"larger than the {MAX_JSON_BYTES:,} bytes allowed"),
    Case("json-nested-100000", json_body("[" * 100_000), 422, "request: "),
    Case("json-nested-objects", json_body('{"model": ' * 10_000 + "{}" + "}" * 10_000), 422, "request"),
    Case("json-invalid", json_body("{'model': 1"), 422, "request: Invalid JSON"),
    Case("json-empty", json_body(b""), 422, "request: Invalid JSON"),
    Case("json-not-utf8", json_body(b'{"model": {"preset": "\xff\xfe"}}'), 422, "request: "),
    Case("json-null", json_body("null"), 422, "request: Input should be"),
    Case("json-list", json_body("[1, 2]"), 422, "request: Input should be"),
    Case("multipart-request-part-oversized",
         lambda env: env.post(files={"request": (None, "{" + " " * MAX_JSON_BYTES + "}")}), 413,
         f"a part without a filename is larger than the {MAX_JSON_BYTES:,} bytes allowed"),
    Case("multipart-request-file-oversized",
         lambda env: env.post(files={"request": ("job.json", b" " * (MAX_JSON_BYTES + 1))}), 413, "larger than"),
    Case("multipart-request-not-json", lambda env: env.post(files={"request": (None, "model=lenet")}), 422,
         "request: Invalid JSON"),
    Case("multipart-request-not-utf8", raw_multipart((b'name="request"', b'{"model": "\xff"}')), 422, "request"),
    Case("multipart-name-not-utf8", raw_multipart((b'name="request"', json.dumps(DIGITS_REQUEST).encode()),
                                                  (b'name="\xff\xfe"', b"x")), 422, "unexpected part"),
    Case("multipart-filename-not-utf8", raw_multipart((b'name="request"', b'{"model": {"spec": {}}}'),
                                                      (b'name="dataset"; filename="\xff.npz"', b"junk")),
         422, UNREADABLE_NPZ),
    Case("multipart-part-without-name", raw_multipart((b'filename="a"', b"x")), 400,
         'The Content-Disposition header field "name" must be provided'),
    Case("multipart-too-many-files", lambda env: env.post(files=[("dataset", ("d", b"x"))] * 5), 400,
         "Too many files"),
    # --- what to compress ---
    Case("preset-unknown", request(model={"preset": "resnet-9000"}), 422, "unknown preset 'resnet-9000'"),
    Case("preset-not-a-string", request(model={"preset": ["lenet"]}), 422, "'preset' must be a preset name"),
    Case("preset-unknown-option", request(model={"preset": "lenet-300-100", "depth": 3}), 422,
         "preset 'lenet-300-100' takes"),
    Case("model-empty", request(model={}), 422, "give either {'preset': name"),
    Case("model-missing", lambda env: env.post(json={"dataset": {"builtin": "digits"}}), 422,
         "give exactly one model"),
    Case("layer-type-unknown", layers({"type": "transformer"}), 422, "layers[1] (transformer): unknown layer type"),
    Case("layer-out-features-negative", layers({"type": "linear", "out_features": -5}), 422,
         "'out_features' must be between 1 and"),
    Case("layer-out-features-string", layers({"type": "linear", "out_features": "ten"}), 422,
         "'out_features' must be an integer"),
    Case("layer-kernel-larger-than-input", spec(layers=[{"type": "conv2d", "out_channels": 2, "kernel_size": 9}]),
         422, "the kernel (9, dilation 1) is larger than the padded input"),
    Case("layer-zero-channels", spec(layers=[{"type": "conv2d", "out_channels": 0, "kernel_size": 3}]), 422,
         "'out_channels' must be between 1 and"),
    Case("layer-unknown-option", layers({"type": "relu", "inplace": True}), 422, "unknown option(s) ['inplace']"),
    Case("layers-not-a-list", spec(layers={"type": "linear"}), 422, "'layers' must be a non-empty list"),
    Case("spec-input-shape-negative", spec(input_shape=[-1, 8, 8], layers=[]), 422,
         "input_shape must hold integers between 1 and"),
    Case("spec-num-classes-string", spec(num_classes="ten", layers=[{"type": "flatten"}]), 422,
         "num_classes must be an integer"),
    Case("spec-input-shape-string-with-npz", with_dataset(tiny_dataset(), TINY_SPEC | {"input_shape": "abc"}), 422,
         "input_shape must be a list of positive integers"),
    Case("spec-input-shape-number-with-npz", with_dataset(tiny_dataset(), TINY_SPEC | {"input_shape": 4}), 422,
         "input_shape must be a list of positive integers"),
    Case("spec-num-classes-string-with-npz", with_dataset(tiny_dataset(), TINY_SPEC | {"num_classes": "three"}),
         422, "num_classes must be an integer"),
    Case("spec-num-classes-list-with-npz", with_dataset(tiny_dataset(), TINY_SPEC | {"num_classes": [3]}), 422,
         "num_classes must be an integer"),
    Case("dataset-builtin-unknown", request(dataset={"builtin": "imagenet"}), 422, "unknown built-in dataset"),
    Case("dataset-server-path", request(dataset={"npz": "/etc/passwd"}), 422, "paths on the server are not accepted"),
    # --- options ---
    Case("epochs-negative", options(epochs=-1), 422, "request.options.epochs: Input should be greater than"),
    Case("epochs-zero", options(epochs=0), 422, "request.options.epochs: Input should be greater than"),
    Case("epochs-absurd", options(epochs=10**12), 422, "request.options.epochs: Input should be less than"),
    Case("epochs-beyond-int64", options(epochs=10**30), 422, "request.options.epochs"),
    Case("epochs-word", options(epochs="ten"), 422, "request.options.epochs: Input should be a valid integer"),
    Case("epochs-boolean", options(epochs=True), 422, "request.options.epochs: Input should be a valid integer"),
    Case("epochs-fraction", options(epochs=2.5), 422, "request.options.epochs: Input should be a valid integer"),
    Case("lr-nan-string", options(lr="NaN"), 422, "request.options.lr: Input should be a valid number"),
    Case("lr-nan-literal", json_options('{"lr": NaN}'), 422,
         "request.options.lr: Input should be a finite number"),
    Case("lr-infinity-literal", json_options('{"lr": -Infinity}'), 422,
         "request.options.lr: Input should be a finite number"),
    Case("threshold-nan-literal", json_options('{"threshold": NaN}'), 422,
         "request.options.threshold: Input should be a finite number"),
    Case("lr-negative", options(lr=-0.1), 422, "request.options.lr: Input should be greater than 0"),
    Case("batch-size-zero", options(batch_size=0), 422, "request.options.batch_size: Input should be greater"),
    Case("threshold-list", options(threshold=[3.0]), 422, "request.options.threshold: Input should be a valid number"),
    Case("threshold-absurd", options(threshold=1e308), 422, "request.options.threshold: Input should be less than"),
    Case("seed-beyond-int64", options(seed=2**64), 422, "request.options.seed"),
    Case("device-unknown", options(device="tpu"), 422, "request.options.device"),
    Case("options-unknown-key", options(epoch=5), 422, "request.options.epoch: Extra inputs are not permitted"),
    Case("options-not-an-object", request(options=[1]), 422, "request.options: Input should be"),
    Case("request-unknown-field", request(priority="high"), 422, "request.priority: Extra inputs are not permitted"),
    Case("dataset-unknown-field", request(dataset={"builtin": "digits", "split": 0.5}), 422, "give {'builtin': name}"),
    # --- parts of a multipart request ---
    Case("part-request-missing", lambda env: env.post(files={"dataset": ("d.npz", tiny_dataset())}), 422,
         "the 'request' part is missing"),
    Case("part-request-twice", lambda env: env.post(files=[("request", (None, json.dumps(DIGITS_REQUEST)))] * 2), 422,
         "the part 'request' was sent more than once"),
    Case("part-dataset-twice",
         lambda env: env.post(files=[("request", (None, json.dumps({"model": {"spec": TINY_SPEC}}))),
                                     *[("dataset", ("d.npz", tiny_dataset()))] * 2]),
         422, "the part 'dataset' was sent more than once"),
    Case("part-unexpected", lambda env: env.post(files=multipart(DIGITS_REQUEST, labels=b"x")), 422,
         "unexpected part 'labels'"),
    Case("part-dataset-not-a-file", lambda env: env.post(files={"request": (None, json.dumps(DIGITS_REQUEST)),
                                                                "dataset": (None, "x")}), 422,
         "the part 'dataset' must be a file"),
    Case("part-dataset-and-builtin", lambda env: env.post(files=multipart(DIGITS_REQUEST, dataset=tiny_dataset())),
         422, "give exactly one dataset"),
    Case("part-no-dataset", lambda env: env.post(files=multipart({"model": {"spec": TINY_SPEC}})), 422,
         "give exactly one dataset"),
    # --- headers ---
    Case("idempotency-key-empty", lambda env: env.post(json=DIGITS_REQUEST, headers={"Idempotency-Key": ""}), 422,
         "Idempotency-Key"),
    Case("idempotency-key-too-long", lambda env: env.post(json=DIGITS_REQUEST, headers={"Idempotency-Key": "k" * 201}),
         422, "Idempotency-Key"),
    Case("authorization-not-bearer", lambda env: env.client.post("/v1/jobs", json=DIGITS_REQUEST,
                                                                 headers={"Authorization": "Token abc"}), 401,
         "missing API key"),
    # --- artifact names ---
    artifact("artifact-dot-dot", "..", 404, "has no artifact '..'", raw=True),
    artifact("artifact-dot-dot-twice", "../../../secret.txt", 404, "/artifacts/../../../secret.txt'", raw=True),
    artifact("artifact-traversal-encoded", "%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt", 404, "no such path"),
    artifact("artifact-traversal-encoded-raw", "%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt", 404,
             "/artifacts/../../../secret.txt'; the API's paths are listed at /docs", raw=True),
    artifact("artifact-dot-dot-encoded", "%2e%2e", 404, "has no artifact '..'"),
    artifact("artifact-backslashes", "..%5C..%5C..%5Csecret.txt", 404, "has no artifact '..\\\\..\\\\"),
    artifact("artifact-absolute", "%2Fetc%2Fpasswd", 404, "/artifacts//etc/passwd'"),
    artifact("artifact-nul", "model.onnx%00.png", 404, "has no artifact 'model.onnx\\x00.png'"),
    artifact("artifact-very-long", "a" * 10_000, 404, "has no artifact 'aaaa"),
    artifact("artifact-unicode", "mod\u00e8le\u202e.onnx", 404, "has no artifact 'mod\u00e8le"),
    artifact("artifact-hidden-partial", ".model.onnx.partial", 404, "has no artifact '.model.onnx.partial'"),
    Case("artifact-of-missing-job", get(f"/v1/jobs/{MISSING_ID}/artifacts/model.onnx"), 404, f"no job {MISSING_ID}"),
    # --- job ids ---
    Case("job-id-guessed", get(f"/v1/jobs/{MISSING_ID}"), 404, f"no job {MISSING_ID}"),
    Case("job-id-dot-dot", lambda env: env.raw_get(b"/v1/jobs/.."), 404, "no job .."),
    Case("job-id-dot-dot-artifacts", lambda env: env.raw_get(b"/v1/jobs/../artifacts"), 404, "no job .."),
    Case("job-id-dot-dot-encoded", get("/v1/jobs/%2e%2e"), 404, "no job .."),
    Case("job-id-10kb", get("/v1/jobs/" + "f" * 10_240), 404, "no job fff"),
    Case("job-id-nul", get("/v1/jobs/abc%00def"), 404, "no job abc"),
    Case("job-id-sql", get("/v1/jobs/1%27%20OR%20%271%27%3D%271"), 404, "no job 1' OR"),
    Case("job-id-unicode-artifacts", get("/v1/jobs/\u0434\u0436\u043e\u0431/artifacts"), 404, "no job"),
    Case("job-cancel-guessed", lambda env: env.client.delete(f"/v1/jobs/{MISSING_ID}", headers=env.headers), 404,
         f"no job {MISSING_ID}"),
    Case("job-list-limit-word", get("/v1/jobs?limit=ten"), 422, "limit: Input should be a valid integer"),
    Case("job-list-offset-negative", get("/v1/jobs?offset=-1"), 422, "offset: Input should be greater"),
    Case("job-list-offset-absurd", get(f"/v1/jobs?offset={10**40}"), 422, "offset: Input should be less"),
]


def within(seconds: float, call: Callable[[], httpx.Response]) -> httpx.Response:
    """``call()``'s answer, failing the test if it takes longer than ``seconds`` (the server must not hang)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["response"] = call()
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"no answer within {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["response"]


@pytest.fixture
def env(make_client, make_settings, dispatched, tmp_path) -> Env:
    settings = make_settings(
        max_json_bytes=MAX_JSON_BYTES, max_upload_bytes=MAX_UPLOAD_BYTES, max_dataset_bytes=MAX_DATASET_BYTES
    )
    client = make_client(settings)
    return Env(client, {"Authorization": f"Bearer {new_key(client, 'alice')}"}, tmp_path, dispatched)


def test_the_corpus_is_large_and_ids_are_unique():
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_malformed_request_gets_a_4xx_saying_what_is_wrong(env, case):
    if case.needs_job:
        env.add_succeeded_job()
    dispatched_before = len(env.dispatched)
    jobs_before = env.get("/v1/jobs").json()["total"]
    response = within(TIMEOUT_S, lambda: case.send(env))
    assert 400 <= response.status_code < 500, response.text[:2000]
    assert response.status_code == case.status, response.text[:2000]
    detail = response.json()["detail"]
    assert isinstance(detail, str) and case.message in detail, detail[:2000]
    assert env.client.get("/healthz").status_code == 200
    assert len(env.dispatched) == dispatched_before and env.get("/v1/jobs").json()["total"] == jobs_before
    uploads = env.client.app.state.settings.upload_dir  # type: ignore[attr-defined]
    assert not any(uploads.iterdir()), "a refused submission left files behind"


def test_a_zip_bomb_is_refused_without_being_inflated(env):
    bomb = zip_bomb()
    tracemalloc.start()
    try:
        response = env.post(files=multipart({"model": {"spec": TINY_SPEC}}, dataset=bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413, response.text
    assert peak < 16 << 20, f"refusing a {len(bomb):,}-byte bomb took {peak:,} bytes"

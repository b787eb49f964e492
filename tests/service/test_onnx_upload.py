"""A REST job whose network is an uploaded ONNX file: accepted only if it imports, run by a worker, and
downloaded as the user's own graph, smaller."""

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from service.core.config import Settings
from tests.service.test_routes import multipart, upload_dir_is_empty
from tests.vdcore.graph.nets import AttentionClassifier, RowReader, export, handmade_mlp
from vdcore.data import load_digits
from vdcore.export import onnx_session
from worker.execute import execute_job

QUICK = {"epochs": 3, "finetune_epochs": 1, "batch_size": 50, "lr": 3e-3, "device": "cpu", "curve_exports": 0}


def _run(client, job_id: str) -> str:
    state = client.app.state
    settings = Settings(**(state.settings.model_dump() | {"job_time_limit_s": 600}))
    return execute_job(job_id, sessions=state.sessionmaker, storage=state.storage, settings=settings)


@pytest.mark.parametrize("network", ["handmade", "attention", "lstm"])
def test_an_uploaded_onnx_model_is_compressed_and_comes_back_in_its_own_graph(client, alice, tmp_path, network):
    if network == "handmade":
        path = handmade_mlp(tmp_path / "net.onnx")
    else:
        torch.manual_seed(0)
        path = export(AttentionClassifier() if network == "attention" else RowReader(), tmp_path / "net.onnx")
    request = {"dataset": {"builtin": "digits"}, "options": QUICK}
    response = client.post("/v1/jobs", files=multipart(request, model=path.read_bytes()), headers=alice)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["request"]["model"] is None and job["uploads"]["model"]["bytes"] == path.stat().st_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _run(client, job["id"]) == "succeeded"
    finally:
        torch.set_num_threads(threads)
    report = client.get(f"/v1/jobs/{job['id']}/artifacts/report.json", headers=alice).json()
    model = client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx", headers=alice).content
    written, original = onnx.load_model_from_string(model), onnx.load(str(path))
    assert [i.name for i in written.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in written.graph.output] == [o.name for o in original.graph.output]
    assert report["compression"] > 1.5 and report["history"]["pretraining"] == []
    assert report["files"]["model.onnx"]["gzip_bytes"] < report["files"]["baseline.onnx"]["gzip_bytes"]
    (tmp_path / "model.onnx").write_bytes(model)
    data = load_digits()
    scores = onnx_session(tmp_path / "model.onnx").run(None, {written.graph.input[0].name: data.x_val.numpy()})[0]
    assert float(np.mean(scores.argmax(1) == data.y_val.numpy())) == pytest.approx(report["accuracy"]["after"])


def _unsupported_op() -> bytes:
    node = helper.make_node("TopK", ["x", "k"], ["y", "i"], name="top")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 8, 2]),
         helper.make_tensor_value_info("i", TensorProto.INT64, ["n", 1, 8, 2])],
        initializer=[onnx.numpy_helper.from_array(np.array([2], np.int64), "k")],
    )
    buffer = io.BytesIO()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("request_body", "model", "message"),
    [
        ({"dataset": {"builtin": "digits"}}, b"junk", "not an ONNX file"),
        ({"dataset": {"builtin": "digits"}}, _unsupported_op(), "node top (TopK) is not supported"),
        ({"model": {"preset": "lenet-300-100"}, "dataset": {"builtin": "digits"}}, b"x", "give exactly one model"),
        ({"dataset": {"builtin": "digits"}}, None, "give exactly one model"),
    ],
)
def test_a_bad_model_upload_is_refused_and_nothing_is_kept(client, alice, dispatched, request_body, model, message):
    files = multipart(request_body) if model is None else multipart(request_body, model=model)
    response = client.post("/v1/jobs", files=files, headers=alice)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert dispatched == [] and upload_dir_is_empty(client)

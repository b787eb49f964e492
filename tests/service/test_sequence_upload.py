"""Sequence models through the front doors: a text classifier on uploaded token ids as a REST job and from
``vdc compress``, with token data that does not fit the table refused at submission."""

import collections
import json

import numpy as np
import onnx
import pytest
import torch

from service.cli import main
from tests.service.conftest import npz_bytes
from tests.service.test_onnx_upload import _run
from tests.service.test_routes import multipart, upload_dir_is_empty

TEXT = {"preset": "text-lstm", "input_shape": [10], "vocabulary": 120, "embedding_dim": 8, "hidden_size": 16}
QUICK = {"epochs": 2, "pretrain_epochs": 2, "finetune_epochs": 1, "batch_size": 50, "lr": 1e-2, "device": "cpu",
         "curve_exports": 0}


def _tokens(count: int = 600, high: int = 120) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).integers(0, high, (count, 10))
    return {"x": x, "y": (x < 10).any(axis=1).astype(np.int64)}


def test_a_text_job_on_uploaded_token_ids_comes_back_as_an_lstm_graph(client, alice):
    request = {"model": TEXT, "options": QUICK}
    response = client.post("/v1/jobs", files=multipart(request, dataset=npz_bytes(**_tokens())), headers=alice)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _run(client, job_id) == "succeeded"
    finally:
        torch.set_num_threads(threads)
    model = onnx.load_model_from_string(client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx", headers=alice).content)
    assert collections.Counter(node.op_type for node in model.graph.node)["LSTM"] == 1
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    report = client.get(f"/v1/jobs/{job_id}/artifacts/report.json", headers=alice).json()
    assert report["model"]["input_shape"] == [10] and report["compression"] > 1


def test_token_ids_beyond_the_table_are_refused_at_submission(client, alice):
    request = {"model": TEXT, "options": QUICK}
    dataset = npz_bytes(**_tokens(high=300))
    response = client.post("/v1/jobs", files=multipart(request, dataset=dataset), headers=alice)
    assert response.status_code == 422
    assert "token ids from 0 to 299, but the model's embedding has 120 rows" in response.text
    assert upload_dir_is_empty(client)


def test_vdc_compress_takes_preset_options_for_a_text_model(tmp_path, capsys):
    np.savez(tmp_path / "tokens.npz", **_tokens())
    options = [f"--preset-option={key}={json.dumps(value)}" for key, value in TEXT.items() if key != "preset"]
    code = main(["compress", "--preset", "text-lstm", *options, "--dataset", str(tmp_path / "tokens.npz"),
                 "--epochs", "2", "--pretrain-epochs", "1", "--finetune-epochs", "1", "--device", "cpu",
                 "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["parameters"] == 120 * 8 + 4 * 16 * (8 + 16 + 2) + 16 * 2 + 2
    with pytest.raises(SystemExit) as refused:
        main(["compress", "--preset", "text-lstm", "--preset-option", "vocabulary"])
    assert refused.value.code == 2 and "expected KEY=VALUE" in capsys.readouterr().err

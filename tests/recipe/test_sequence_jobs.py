"""Jobs on sequence models: an image read row by row by an LSTM, a text classifier on integer token ids; their
ONNX files hold LSTM nodes and run in onnxruntime at the reported accuracy, and token data is checked."""

import collections
import warnings

import numpy as np
import onnx
import pytest
import torch

from recipe.options import JobOptions
from recipe.pipeline import JobError, JobInput, prepare, run
from tests.vdcore.test_embedding import VOCABULARY, TokenClassifier
from vdcore.data import load_digits
from vdcore.export import onnx_session

QUICK = JobOptions(epochs=3, pretrain_epochs=2, finetune_epochs=1, batch_size=50, lr=1e-2, device="cpu",
                   curve_exports=0)
TEXT = {"preset": "text-lstm", "input_shape": [10], "vocabulary": 120, "embedding_dim": 8, "hidden_size": 16}


def _tokens(path, count=900, high=120):
    """The label says whether a token below 10 occurs: most of the vocabulary does not matter."""
    x = np.random.default_rng(0).integers(0, high, (count, 10))
    np.savez(path, x=x, y=(x < 10).any(axis=1).astype(np.int64))
    return path


def _onnx_accuracy(path, x: np.ndarray, y: np.ndarray) -> float:
    session = onnx_session(path)
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.mean(logits.argmax(1) == y))


@pytest.mark.parametrize("kind", ["rows", "text"])
def test_a_sequence_job_writes_recurrent_onnx_at_the_reported_accuracy(kind, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if kind == "rows":
            job = JobInput({"preset": "lstm-rows", "hidden_size": 24}, {"builtin": "digits"}, options=QUICK)
        else:
            job = JobInput(TEXT, {"npz": str(_tokens(tmp_path / "tokens.npz"))}, options=QUICK)
        report = run(job, tmp_path / "out")
    finally:
        torch.set_num_threads(threads)
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert collections.Counter(node.op_type for node in model.graph.node)["LSTM"] == 1
    assert report.compression > 1.5
    if kind == "rows":
        data = load_digits()
        x, y = data.x_val.numpy(), data.y_val.numpy()
    else:
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
        prepared = prepare(job)
        x, y = prepared.dataset.x_val.numpy(), prepared.dataset.y_val.numpy()
    assert _onnx_accuracy(tmp_path / "out" / "model.onnx", x, y) == pytest.approx(report.accuracy.after)


def test_token_jobs_refuse_data_that_is_not_ids_of_the_table(tmp_path):
    with pytest.raises(JobError, match=r"looks up token ids, and 'builtin' datasets hold images"):
        prepare(JobInput(TEXT, {"builtin": "digits"}))
    with pytest.raises(JobError, match=r"token ids from 0 to 199, but the model's embedding has 120 rows"):
        prepare(JobInput(TEXT, {"npz": str(_tokens(tmp_path / "wide.npz", high=200))}))
    np.savez(tmp_path / "floats.npz", x=np.zeros((20, 10), np.float32), y=np.arange(20) % 2)
    with pytest.raises(JobError, match="holds float32 values, but the model looks up token ids"):
        prepare(JobInput(TEXT, {"npz": str(tmp_path / "floats.npz")}))
    with pytest.raises(JobError, match=r"examples of shape \[12\]"):
        prepare(JobInput(TEXT | {"input_shape": [12]}, {"npz": str(_tokens(tmp_path / "short.npz"))}))


def test_an_onnx_token_classifier_takes_npz_token_ids(tmp_path):
    """A user's ONNX file whose int64 input indexes an embedding table: the job feeds it the npz's ids."""
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    path = tmp_path / "tokens.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 10, dtype=torch.long),), str(path), input_names=["tokens"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, dynamo=True)
    dataset = {"npz": str(_tokens(tmp_path / "ids.npz", high=VOCABULARY))}
    report = run(JobInput({"onnx": str(path)}, dataset, options=QUICK), tmp_path / "out")
    prepared = prepare(JobInput({"onnx": str(path)}, dataset))
    x, y = prepared.dataset.x_val.numpy(), prepared.dataset.y_val.numpy()
    assert _onnx_accuracy(tmp_path / "out" / "model.onnx", x, y) == pytest.approx(report.accuracy.after)
    with pytest.raises(JobError, match=f"embedding has {VOCABULARY} rows"):
        prepare(JobInput({"onnx": str(path)}, {"npz": str(_tokens(tmp_path / "wide.npz", high=VOCABULARY + 1))}))

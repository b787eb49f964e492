"""A job whose model is the user's ONNX file: trained from the file's weights, written back into its graph."""

import numpy as np
import onnx
import pytest
import torch

from recipe.options import JobOptions
from recipe.pipeline import JobError, JobInput, prepare, run
from recipe.progress import Stage
from tests.vdcore.graph.nets import ResNetish, export, handmade_mlp
from vdcore.data import load_digits
from vdcore.export import onnx_session

QUICK = JobOptions(epochs=4, finetune_epochs=1, batch_size=50, lr=3e-3, device="cpu", curve_exports=0)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    torch.manual_seed(0)
    return export(ResNetish(), tmp_path_factory.mktemp("resnet") / "resnet.onnx")


@pytest.mark.parametrize("source", ["resnet", "handmade"])
def test_an_onnx_job_writes_the_users_graph_back_smaller_at_the_reported_accuracy(
    resnet_file, tmp_path, source
):
    path = resnet_file if source == "resnet" else handmade_mlp(tmp_path / "handmade.onnx")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run(JobInput({"onnx": str(path)}, {"builtin": "digits"}, options=QUICK), tmp_path / "out")
    finally:
        torch.set_num_threads(threads)
    assert report.history[Stage.PRETRAINING] == [], "the file's weights are the start"
    assert report.compression > 1.5
    original, written = onnx.load(str(path)), onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in written.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in written.graph.output] == [o.name for o in original.graph.output]
    files = report.files
    assert files["model.onnx"].gzip_bytes < files["baseline.onnx"].gzip_bytes
    if source == "resnet":  # dead channels are found in the graph (which form is written is a timing race)
        assert sum(report.units.after) < sum(report.units.before)
    data = load_digits()
    session = onnx_session(tmp_path / "out" / "model.onnx")
    logits = session.run(None, {written.graph.input[0].name: data.x_val.numpy()})[0]
    assert float(np.mean(logits.argmax(1) == data.y_val.numpy())) == pytest.approx(report.accuracy.after)


def test_an_onnx_model_takes_no_weights_and_must_fit_the_data(resnet_file, tmp_path):
    with pytest.raises(JobError, match="holds its own weights"):
        prepare(JobInput({"onnx": str(resnet_file)}, {"builtin": "digits"}, weights=str(tmp_path / "w")))
    np.savez(tmp_path / "wide.npz", x=np.zeros((20, 1, 9, 9), np.float32), y=np.arange(20) % 10)
    with pytest.raises(JobError, match=r"the model takes examples of shape \[1, 8, 8\]"):
        prepare(JobInput({"onnx": str(resnet_file)}, {"npz": str(tmp_path / "wide.npz")}))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(JobError, match="not an ONNX file"):
        prepare(JobInput({"onnx": str(tmp_path / "junk.onnx")}, {"builtin": "digits"}))

"""``vdc compress`` and ``vdc submit``: jobs from the terminal, with their summary and their errors."""

import json

import onnx
import torch

from service import cli
from service.cli import build_parser, main
from service.client import Client
from tests.vdcore.graph.nets import MobileNetish, export, handmade_mlp


def test_compress_writes_artifacts_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["compress", "--out", str(out), "--epochs", "2", "--pretrain-epochs", "1", "--device", "cpu"])
    assert code == 0
    assert json.loads((out / "report.json").read_text())["options"]["epochs"] == 2
    assert (out / "model.onnx").exists()
    assert "compression" in capsys.readouterr().out


def test_compress_reports_bad_input_without_a_traceback(tmp_path, capsys):
    code = main(["compress", "--preset", "lenet-5-caffe", "--out", str(tmp_path), "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "larger than the padded input" in err and "Traceback" not in err


def test_boolean_options_are_flags():
    parse = build_parser().parse_args
    assert parse(["compress", "--structured"]).structured is True
    assert parse(["compress", "--no-structured"]).structured is False
    assert parse(["compress"]).structured is None  # unset: the job's default applies


def test_compress_takes_an_onnx_file(tmp_path, capsys):
    torch.manual_seed(0)
    path = export(MobileNetish(), tmp_path / "mobilenet.onnx", dynamo=False)
    out = tmp_path / "out"
    code = main(["compress", "--onnx", str(path), "--out", str(out), "--epochs", "2", "--finetune-epochs", "1",
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["history"]["pretraining"] == [] and report["compression"] > 1
    assert [i.name for i in onnx.load(str(out / "model.onnx")).graph.input] == ["pixels"]


def test_submit_uploads_an_onnx_file(client, alice, tmp_path, monkeypatch, capsys):
    client.headers.update(alice)

    def through_the_app(server: str, key: str) -> Client:
        api = Client(server, key)
        api.http = client  # the app's TestClient is an httpx.Client
        return api

    monkeypatch.setattr(cli, "Client", through_the_app)
    path = handmade_mlp(tmp_path / "net.onnx")
    assert main(["submit", "--onnx", str(path), "--key", "k", "--epochs", "2"]) == 0, capsys.readouterr().err
    job_id = capsys.readouterr().out.strip()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["request"]["model"] is None and job["uploads"]["model"]["bytes"] == path.stat().st_size

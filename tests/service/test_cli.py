"""``vdc compress``: the local job from the terminal, with its summary and its errors."""

import json

from service.cli import build_parser, main


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

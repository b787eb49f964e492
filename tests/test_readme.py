"""The README is the user's manual: its set-up commands are what CI runs, and its quickstart runs as written."""

import re
import runpy
from pathlib import Path

import torch

import vdcore

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_setup_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1).strip().splitlines()
    commands = [line.split("#")[0].strip() for line in first_block]
    assert commands == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def _run_library_example(index: int, must_mention: str, tmp_path, monkeypatch) -> dict:
    """Run the ``index``-th python block of the library section as a script in ``tmp_path``; its globals."""
    library = README[README.index("## Use the method in your own training code"):]
    example = re.findall(r"```python\n(.*?)```", library, re.S)[index]
    assert must_mention in example
    script = tmp_path / "example.py"
    script.write_text(example)
    monkeypatch.chdir(tmp_path)
    return runpy.run_path(str(script))


def test_library_quickstart_runs(tmp_path, monkeypatch):
    namespace = _run_library_example(0, "sparsify_", tmp_path, monkeypatch)
    assert (tmp_path / "digits.onnx").exists()
    assert namespace["history"][-1].sparsity > 0.5


def test_library_onnx_example_runs(tmp_path, monkeypatch):
    namespace = _run_library_example(1, "shrink_onnx", tmp_path, monkeypatch)
    assert (tmp_path / "mine-small.onnx").exists()
    widths, before = vdcore.layer_widths(namespace["shrunk"].net), vdcore.layer_widths(namespace["net"])
    assert sum(widths) < sum(before), "dead channels are cut out of the graph"


def test_library_recurrent_example_runs(tmp_path, monkeypatch):
    namespace = _run_library_example(2, "nn.LSTM", tmp_path, monkeypatch)
    assert (tmp_path / "rows.onnx").exists()
    assert isinstance(namespace["pruned"][1].rnn, torch.nn.LSTM)
    assert vdcore.sparsity_report(namespace["pruned"]).compression > 2


def test_the_objective_example_runs_and_says_whether_it_was_met(tmp_path, capsys):
    """The README's ``--max-accuracy-drop`` command, as written but for fewer epochs and another folder."""
    from service.cli import main

    command = next(line for line in README.splitlines() if "--max-accuracy-drop" in line and "vdc compress" in line)
    argv = command.split("vdc", 1)[1].split()
    argv[argv.index("--epochs") + 1] = "6"
    argv[argv.index("--out") + 1] = str(tmp_path / "budget")
    assert main([*argv, "--pretrain-epochs", "4", "--finetune-epochs", "1", "--lr", "1e-2"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "max_accuracy_drop 0.5:" in printed and ("met" in printed or "missed by" in printed)
    assert (tmp_path / "budget" / "tradeoff.png").exists()

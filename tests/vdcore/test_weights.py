"""Weights are safetensors data, loaded strictly into a model built from a spec."""

import pytest
import torch
from safetensors.torch import save_file

from vdcore.spec import build_model
from vdcore.weights import WeightsError, load_weights, save_weights

SPEC = {
    "input_shape": [1, 6, 6],
    "num_classes": 3,
    "layers": [
        {"type": "conv2d", "out_channels": 2, "kernel_size": 3},
        {"type": "batchnorm2d"},
        {"type": "flatten"},
        {"type": "linear", "out_features": 3},
    ],
}


def test_round_trip(tmp_path):
    torch.manual_seed(0)
    source = build_model(SPEC).eval()
    save_weights(source, tmp_path / "w.safetensors")
    target = load_weights(build_model(SPEC), tmp_path / "w.safetensors").eval()
    x = torch.randn(2, 1, 6, 6)
    assert torch.equal(source(x), target(x))


def _state(**changes):
    state = {k: v.clone() for k, v in build_model(SPEC).state_dict().items()}
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return state


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (_state(**{"3.weight": None}), r"missing tensors \['3.weight'\]"),
        (_state(extra=torch.zeros(2)), r"the model does not have \['extra'\]"),
        (_state(**{"0.weight": torch.zeros(2, 1, 5, 5)}), r"'0.weight' has shape \[2, 1, 5, 5\].*\[2, 1, 3, 3\]"),
        (_state(**{"3.bias": torch.zeros(3, dtype=torch.int32)}), "floating-point"),
        (_state(**{"3.bias": torch.tensor([0.0, float("nan"), 0.0])}), "NaN or infinite"),
    ],
)
def test_weights_that_do_not_fit_are_refused(tmp_path, state, message):
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match=message):
        load_weights(build_model(SPEC), tmp_path / "w.safetensors")


def test_batchnorm_counter_may_be_left_out(tmp_path):
    save_file(_state(**{"1.num_batches_tracked": None}), tmp_path / "w.safetensors")
    load_weights(build_model(SPEC), tmp_path / "w.safetensors")


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"{not safetensors", b"PK\x03\x04pickle?"])
def test_unreadable_files_are_refused(tmp_path, content):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(build_model(SPEC), path)


def test_truncated_file_is_refused(tmp_path):
    save_weights(build_model(SPEC), tmp_path / "w.safetensors")
    whole = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(whole[: len(whole) - 40])
    with pytest.raises(WeightsError, match="not a readable"):
        load_weights(build_model(SPEC), tmp_path / "w.safetensors")

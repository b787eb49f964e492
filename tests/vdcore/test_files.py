"""A file written through ``atomic_path`` appears whole when the writing ends, or the old one stays."""

import pytest

from vdcore.files import atomic_path


def test_the_file_appears_only_when_the_block_ends(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic_path(target) as partial:
        partial.write_bytes(b"new")
        assert not target.exists() and partial.parent == tmp_path and partial.name.startswith(".")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as partial:
        partial.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_two_writers_of_one_file_get_different_temporary_names(tmp_path):
    with atomic_path(tmp_path / "a") as first, atomic_path(tmp_path / "a") as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert (tmp_path / "a").read_text() == "first"  # the last to finish wins, whole

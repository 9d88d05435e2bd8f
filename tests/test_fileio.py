"""Atomic outputs and one-line errors for the files users name."""

from __future__ import annotations

import pytest

from trtq.errors import TrtqError
from trtq.fileio import atomic_path, atomic_write, check_output_path, read_input_bytes, read_input_text


def test_read_input_errors_name_what_was_asked_for(tmp_path):
    with pytest.raises(TrtqError, match="^profile file not found: "):
        read_input_bytes(tmp_path / "missing.json", "profile file")
    with pytest.raises(TrtqError, match="is a directory, not a file"):
        read_input_bytes(tmp_path, "trtexec log")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(TrtqError, match="is not UTF-8 text"):
        read_input_text(latin, "exclude list")
    assert read_input_text(latin, "trtexec log", errors="replace") == "caf\ufffd"


def test_atomic_write_replaces_whole_files_only(tmp_path):
    target = tmp_path / "out.cache"
    atomic_write(target, "first\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half writ")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.cache"]  # the temporary file is gone


def test_outputs_in_missing_directories_fail_before_any_work(tmp_path):
    with pytest.raises(TrtqError, match="does not exist"):
        check_output_path(tmp_path / "no" / "such" / "dir" / "x.onnx")
    with pytest.raises(TrtqError, match="is a directory"):
        check_output_path(tmp_path)


def test_json_outputs_stay_valid_json_with_non_finite_numbers(tmp_path):
    import json

    from trtq.fileio import write_json

    path = write_json(tmp_path / "bench.json", {"throughput_qps": float("nan"), "p99": [1.5, float("inf")]})
    assert json.loads(path.read_text()) == {"throughput_qps": None, "p99": [1.5, None]}

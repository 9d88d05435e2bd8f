"""Atomic outputs and one-line errors for the files users name."""

from __future__ import annotations

import pytest

from trtq.errors import TrtqError
from trtq.fileio import (
    atomic_path,
    atomic_write,
    check_output_path,
    check_outputs,
    read_input_bytes,
    read_input_text,
    refuse_engine_suffix,
)


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


def test_an_output_that_is_an_input_is_refused_by_any_name(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights")
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    hard = tmp_path / "hard.onnx"
    hard.hardlink_to(model)
    for out in (model, link, hard, tmp_path / "." / "model.onnx"):
        with pytest.raises(TrtqError, match=r"\(-o\) is MODEL, which this command reads"):
            check_outputs({"-o": out}, {"MODEL": model})
    assert model.read_bytes() == b"weights"
    # inputs not there yet (their own check says so) and None entries are no conflict
    assert check_outputs({"-o": tmp_path / "out.onnx", "--json": None},
                         {"MODEL": model, "--cache": tmp_path / "none.cache", "--ranges": None}) == {
        "-o": tmp_path / "out.onnx"}


def test_two_outputs_of_one_name_are_refused(tmp_path):
    with pytest.raises(TrtqError, match="the outputs --cache and --json are one file"):
        check_outputs({"--cache": tmp_path / "x", "--json": tmp_path / "x"})


@pytest.mark.parametrize("suffix", [".engine", ".plan", ".TRT"])
def test_an_onnx_output_named_like_an_engine_names_the_build_command(tmp_path, suffix):
    with pytest.raises(TrtqError, match=r"names a TensorRT engine.*trtq build .*m\.int8\.onnx --int8 -o "):
        refuse_engine_suffix(tmp_path / f"m{suffix}", "-o", "int8")
    refuse_engine_suffix(tmp_path / "m.onnx", "-o", "int8")


def test_a_full_disk_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import os as real_os

    target = tmp_path / "model.onnx"
    target.write_bytes(b"the old model")

    def full(fd, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(real_os, "fsync", full)
    with pytest.raises(TrtqError, match=r"^cannot write .*model\.onnx: no space left on its device \(\d+ MiB free\); "
                                        r"nothing was written$"):
        atomic_write(target, b"the new model")
    assert target.read_bytes() == b"the old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_too_little_room_is_said_before_a_byte_is_written(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    target = tmp_path / "model.onnx"
    target.write_bytes(b"the old model")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - (1 << 20), 1 << 20))
    with pytest.raises(TrtqError, match=r"^cannot write .*model\.onnx: it needs 2\.0 MiB and its device has 1\.0 MiB "
                                        r"free; nothing was written$"):
        atomic_write(target, b"x" * (2 << 20))
    assert target.read_bytes() == b"the old model" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    atomic_write(target, b"y" * 1000)  # what fits is written
    assert target.read_bytes() == b"y" * 1000

"""Uploaded checkpoints are checked in a limited child process; every hostile file is rejected with a reason."""
import struct
from pathlib import Path

import pytest

from modelzoo.engine import default_checkpoint_path
from modelzoo.validation import Limits, validate
from tests.modelzoo.gguf_factory import write_tiny_gguf


@pytest.mark.slow
def test_it_accepts_a_sound_gguf_and_reports_its_metadata(tmp_path: Path):
    report = validate(write_tiny_gguf(tmp_path / "tiny.gguf"))
    assert report.ok, report.reason
    assert (report.format, report.architecture, report.quantization) == ("gguf", "llama", "F32")
    assert report.context_length == 256
    assert report.parameter_count == 26880


@pytest.mark.parametrize("name", ["model.bin", "model.pt", "weights.pth", "last.ckpt"])
def test_it_refuses_pickles_without_reading_them(tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04not even read")
    report = validate(path)
    assert not report.ok
    assert "pickle" in report.reason


@pytest.mark.slow
def test_it_rejects_weights_with_nan(tmp_path: Path):
    report = validate(write_tiny_gguf(tmp_path / "nan.gguf", poison="blk.1.ffn_up.weight"))
    assert not report.ok
    assert "NaN" in report.reason


@pytest.mark.slow
def test_it_rejects_a_checkpoint_that_fails_a_check_with_its_reason_alone(tmp_path: Path):
    report = validate(write_tiny_gguf(tmp_path / "heads.gguf", n_heads=4, n_kv_heads=3))
    assert not report.ok
    assert report.reason.startswith("n_heads (4) is not a multiple of n_kv_heads (3)")


def test_it_rejects_a_truncated_gguf(tmp_path: Path):
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) // 2])
    report = validate(cut)
    assert not report.ok
    assert report.reason.endswith(f"the file holds {len(whole) // 2} bytes (is it truncated?)")


def test_it_rejects_a_header_that_declares_an_absurd_array_length(tmp_path: Path):
    key = b"tokenizer.ggml.tokens"
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)  # version 3, no tensors, one key
    header += struct.pack("<Q", len(key)) + key + struct.pack("<I", 9)  # type: array
    header += struct.pack("<IQ", 8, 2**62)  # of strings, 2**62 of them
    path = tmp_path / "liar.gguf"
    path.write_bytes(header + b"\0" * 64)
    report = validate(path, limits=Limits(timeout_s=20))
    assert not report.ok
    assert report.reason == ("GGUF key 'tokenizer.ggml.tokens' declares 2^62 array elements (string); "
                             f"the file holds {path.stat().st_size} bytes")


def test_it_rejects_a_chat_template_that_reaches_for_python_internals(tmp_path: Path):
    template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    report = validate(write_tiny_gguf(tmp_path / "escape.gguf", chat_template=template))
    assert not report.ok
    assert report.reason == "the chat template failed: access to attribute '__class__' of 'str' object is unsafe."


def test_it_stops_a_chat_template_that_eats_memory(tmp_path: Path):
    template = "{{ 'x' * 4000000000 }}"
    report = validate(write_tiny_gguf(tmp_path / "hog.gguf", chat_template=template),
                      limits=Limits(memory_bytes=3 * 1024**3))
    assert not report.ok
    assert report.reason == ("the chat template went past its budget: '*' would build a value of 4000000000 items "
                             "(1 x 4000000000); at most 16777216 fit in memory")


def test_it_stops_a_chat_template_that_loops_for_ever(tmp_path: Path):
    template = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    report = validate(write_tiny_gguf(tmp_path / "spin.gguf", chat_template=template), limits=Limits(timeout_s=30))
    assert not report.ok
    assert report.reason.startswith("the chat template went past its budget: the template took more than")
    assert report.seconds < 10


def test_it_stops_a_child_that_runs_past_the_time_limit(tmp_path: Path):
    report = validate(write_tiny_gguf(tmp_path / "tiny.gguf"), limits=Limits(timeout_s=0.5))
    assert not report.ok
    assert report.reason == "validation took longer than 0.5 s"
    assert report.seconds < 5


@pytest.mark.slow
def test_it_writes_nothing_beside_the_file(tmp_path: Path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert validate(path).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


@pytest.mark.slow
def test_it_accepts_the_bundled_model():
    report = validate(default_checkpoint_path())
    assert report.ok, report.reason
    assert report.quantization == "Q4_1" and report.context_length == 8192

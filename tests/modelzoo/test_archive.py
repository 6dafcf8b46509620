"""Uploaded zips are unpacked only when harmless; each hostile archive is refused with its reason."""
import stat
import zipfile
from pathlib import Path

import pytest

from modelzoo.archive import ArchiveError, ArchiveLimits, extract_checkpoint_zip


def make_zip(path: Path, members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


MODEL = {"config.json": b"{}", "model.safetensors": b"weights", "tokenizer.json": b"{}"}


def test_it_unpacks_a_model_folder_flat_and_skips_other_files(tmp_path: Path):
    archive = make_zip(tmp_path / "m.zip", {f"my-model/{k}": v for k, v in MODEL.items()} | {"my-model/notes.txt": b"x"})
    out = extract_checkpoint_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == sorted(MODEL)
    assert (out / "model.safetensors").read_bytes() == b"weights"


@pytest.mark.parametrize("name", ["../evil.safetensors", "/etc/evil.safetensors", "a/../../evil.safetensors"])
def test_it_refuses_paths_that_leave_the_folder(tmp_path: Path, name: str):
    archive = make_zip(tmp_path / "m.zip", MODEL | {name: b"x"})
    with pytest.raises(ArchiveError, match="outside"):
        extract_checkpoint_zip(archive, tmp_path / "out")
    assert not (tmp_path / "evil.safetensors").exists() and not (tmp_path / "out").exists()


def test_it_refuses_links(tmp_path: Path):
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in MODEL.items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("tokenizer.model")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveError, match="link"):
        extract_checkpoint_zip(archive, tmp_path / "out")


def test_it_refuses_pickles_inside(tmp_path: Path):
    archive = make_zip(tmp_path / "m.zip", MODEL | {"pytorch_model.bin": b"\x80\x04"})
    with pytest.raises(ArchiveError, match="pickle"):
        extract_checkpoint_zip(archive, tmp_path / "out")


def test_it_refuses_a_zip_bomb(tmp_path: Path):
    archive = make_zip(tmp_path / "m.zip", MODEL | {"model-2.safetensors": b"\0" * (64 * 1024**2)})
    assert archive.stat().st_size < 1024**2
    with pytest.raises(ArchiveError, match="zip bomb"):
        extract_checkpoint_zip(archive, tmp_path / "out")


def test_it_enforces_the_size_limit_on_inflated_bytes(tmp_path: Path):
    archive = make_zip(tmp_path / "m.zip", MODEL | {"big.safetensors": bytes(range(256)) * 8192},
                       compression=zipfile.ZIP_STORED)
    with pytest.raises(ArchiveError, match="size limit"):
        extract_checkpoint_zip(archive, tmp_path / "out", limits=ArchiveLimits(max_total_bytes=1024**2))
    assert not (tmp_path / "out").exists()  # nothing half-unpacked is left


def test_it_refuses_something_that_is_not_a_model_folder(tmp_path: Path):
    with pytest.raises(ArchiveError, match="config.json"):
        extract_checkpoint_zip(make_zip(tmp_path / "m.zip", {"readme.md": b"hi"}), tmp_path / "out")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match="not a zip"):
        extract_checkpoint_zip(tmp_path / "junk.zip", tmp_path / "out2")

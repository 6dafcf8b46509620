"""Unpack an uploaded .zip of a Hugging Face style checkpoint directory, refusing what could do harm.

Refused with a reason: paths that leave the folder (`../`, absolute), links, pickles, more files or bytes
than the limits, and members whose compression ratio gives a zip bomb away. Sizes are enforced on the bytes
actually inflated, not on the sizes the archive declares. Files that are no part of a checkpoint are skipped.
"""
from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelzoo.pickles import pickle_refusal

CHECKPOINT_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "chat_template.jinja", "model.safetensors.index.json", "adapter_config.json",
})
CHUNK_BYTES = 1024 * 1024


class ArchiveError(ValueError):
    """The archive is refused; the message says why."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int = 64 * 1024**3
    max_files: int = 256
    max_ratio: int = 200  # inflated / compressed, for members over 1 MiB


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        raise ArchiveError(f"{info.filename!r} points outside the checkpoint folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(f"{info.filename!r} is a link")
    if refusal := pickle_refusal(info.filename):
        raise ArchiveError(refusal)
    return path


def _wanted(path: PurePosixPath) -> bool:
    return path.name in CHECKPOINT_FILES or path.suffix == ".safetensors"


def extract_checkpoint_zip(
    archive: Path, destination: Path, *, adapter: bool = False, limits: ArchiveLimits = ArchiveLimits()
) -> Path:
    """Unpack the checkpoint (or, with `adapter`, LoRA adapter) files of `archive` flat into `destination`
    (which must not exist yet)."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as error:
        raise ArchiveError(f"not a zip archive ({error})") from error
    with zf:
        members = [info for info in zf.infolist() if not info.is_dir()]
        if len(members) > limits.max_files:
            raise ArchiveError(f"{len(members)} files; at most {limits.max_files} are accepted")
        chosen: dict[str, zipfile.ZipInfo] = {}
        for info in members:
            path = _member_path(info)
            if not _wanted(path):
                continue
            if path.name in chosen:
                raise ArchiveError(f"two files named {path.name!r} in the archive")
            if info.file_size > CHUNK_BYTES and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise ArchiveError(f"{info.filename!r} inflates {info.file_size // max(info.compress_size, 1)}x: a zip bomb")
            chosen[path.name] = info
        if adapter and not {"adapter_config.json", "adapter_model.safetensors"} <= chosen.keys():
            raise ArchiveError("a LoRA adapter needs adapter_config.json and adapter_model.safetensors (PEFT layout)")
        if not adapter and ("config.json" not in chosen or not any(name.endswith(".safetensors") for name in chosen)):
            raise ArchiveError("the archive needs config.json and *.safetensors (a Hugging Face model folder); "
                               "a LoRA adapter is uploaded with its base checkpoint chosen")
        destination.mkdir(parents=True)
        try:
            _inflate(zf, chosen, destination, limits)
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise
    return destination


def _inflate(zf: zipfile.ZipFile, chosen: dict[str, zipfile.ZipInfo], destination: Path, limits: ArchiveLimits) -> None:
    total = 0
    for name, info in chosen.items():
        with zf.open(info) as source, (destination / name).open("wb") as out:
            written = 0
            while chunk := source.read(CHUNK_BYTES):
                written += len(chunk)
                total += len(chunk)
                if written > info.file_size or total > limits.max_total_bytes:
                    raise ArchiveError(f"{info.filename!r} inflates past its declared size or the size limit")
                out.write(chunk)

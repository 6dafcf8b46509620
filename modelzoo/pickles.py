"""Pickle formats execute code when loaded: every way in (the admin form, uploads, archive members,
validation) refuses them by name before anything reads them, with the reason below."""
from __future__ import annotations

from pathlib import PurePath

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})


def pickle_refusal(name: str) -> str | None:
    """Why a file called `name` is refused, or None when its name is not a pickle format's."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in PICKLE_SUFFIXES:
        return None
    return f"{PurePath(name).name!r} is a pickle ({suffix}), which can run code when loaded; upload GGUF or safetensors"

"""The worker-side pool of resident models, and cached checkpoint metadata for the web side.

`engine_for(checkpoint)` loads a checkpoint at most once per process and keeps its Engine resident; every
job thread of a `--pool threads` worker shares it (the Engine batches their requests together).
`checkpoint_info(checkpoint)` reads only headers/metadata (tokenizer, chat template, context length),
which is what the web process needs to count prompt tokens; it never loads weights.

Both caches are keyed by (checkpoint id, path), so an admin who points a row at a new file gets a fresh load.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from modelzoo.engine import CheckpointInfo, Engine
    from modelzoo.models import Checkpoint

logger = logging.getLogger(__name__)

_CacheKey = tuple[int, str]

_lock = threading.Lock()
_key_locks: dict[_CacheKey, threading.Lock] = {}
_engines: dict[_CacheKey, Engine] = {}
_infos: dict[_CacheKey, CheckpointInfo] = {}


def _key(checkpoint: Checkpoint) -> _CacheKey:
    return (checkpoint.pk, checkpoint.path)


def _key_lock(key: _CacheKey) -> threading.Lock:
    with _lock:
        return _key_locks.setdefault(key, threading.Lock())


def _load_engine(checkpoint: Checkpoint) -> Engine:
    from modelzoo.engine import Engine, load_checkpoint

    path = checkpoint.file_path()
    logger.info("Loading checkpoint %s from %s", checkpoint.name, path)
    loaded = load_checkpoint(path, device=settings.ENGINE_DEVICE)
    return Engine(loaded, max_batch_size=settings.ENGINE_MAX_BATCH_SIZE, max_seq_len=settings.ENGINE_MAX_SEQ_LEN)


def _inspect(checkpoint: Checkpoint) -> CheckpointInfo:
    from modelzoo.engine import inspect_checkpoint

    return inspect_checkpoint(checkpoint.file_path())


def engine_for(checkpoint: Checkpoint) -> Engine:
    """The resident Engine of `checkpoint`, loaded on first use (once per process, even under concurrent calls)."""
    key = _key(checkpoint)
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _key_lock(key):  # one loader per checkpoint; other checkpoints load in parallel
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _load_engine(checkpoint)
    return engine


def checkpoint_info(checkpoint: Checkpoint) -> CheckpointInfo:
    """Tokenizer, chat template and config of `checkpoint`, read once per process from its metadata."""
    key = _key(checkpoint)
    info = _infos.get(key)
    if info is not None:
        return info
    with _key_lock(key):
        info = _infos.get(key)
        if info is None:
            info = _infos[key] = _inspect(checkpoint)
    return info


def context_window(checkpoint: Checkpoint) -> int:
    """How many tokens (prompt + completion) a job on `checkpoint` may use: the checkpoint's context length,
    capped by the KV cache the workers' engines allocate (ENGINE_MAX_SEQ_LEN)."""
    return min(int(checkpoint_info(checkpoint).config.max_seq_len), settings.ENGINE_MAX_SEQ_LEN)


def loaded_checkpoint_ids() -> list[int]:
    return sorted(pk for pk, _ in _engines)


def clear() -> None:
    """Drop every cached engine and info (closing the engines). For tests and reloads."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
        _infos.clear()
        _key_locks.clear()
    for engine in engines:
        engine.close()

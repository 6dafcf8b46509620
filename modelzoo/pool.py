"""The worker-side pool of resident models, and cached checkpoint metadata for the web side.

`engine_for(checkpoint)` loads a checkpoint at most once per process and keeps its Engine resident; every
job thread of a `--pool threads` worker shares it (the Engine batches their requests together).
`checkpoint_info(checkpoint)` reads only headers/metadata (tokenizer, chat template, context length),
which is what the web process needs to count prompt tokens; it never loads weights.

Both caches are keyed by (checkpoint id, path), so an admin who points a row at a new file gets a fresh load.

Resident engines share the worker's memory budget (WORKER_MEMORY_BUDGET_BYTES; by default 90% of the GPU,
or 8 GiB on the CPU). Loading one that does not fit evicts others by demand (set_demand_source: jobs queued for them or
asked for recently), then recency, and never one with a running job (see `serving` and modelzoo.residency).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from django.conf import settings

from modelzoo.residency import Resident, choose_evictions

if TYPE_CHECKING:
    from modelzoo.engine import CheckpointInfo, Engine
    from modelzoo.models import Checkpoint

logger = logging.getLogger(__name__)

_CacheKey = tuple[int, str]

_lock = threading.Lock()
_key_locks: dict[_CacheKey, threading.Lock] = {}
_engines: dict[_CacheKey, Engine] = {}
_infos: dict[_CacheKey, CheckpointInfo] = {}
_residents: dict[_CacheKey, Resident] = {}
_state_lock = threading.Lock()  # guards _engines/_residents bookkeeping; held only briefly
_load_lock = threading.Lock()  # one load (and its evictions) at a time, so the budget is never counted twice

#: Called as `listener(event, checkpoint_id)` after a load ("loaded") or an eviction ("evicted"); the worker
#: uses it to consume (or stop consuming) the checkpoint's queue. See add_listener.
_listeners: list[Callable[[str, int], None]] = []

_demand_source: Callable[[], dict[int, int]] | None = None  # see set_demand_source


def _key(checkpoint: Checkpoint) -> _CacheKey:
    return (checkpoint.pk, checkpoint.path)


def _key_lock(key: _CacheKey) -> threading.Lock:
    with _lock:
        return _key_locks.setdefault(key, threading.Lock())


def _load_engine(checkpoint: Checkpoint) -> Engine:
    from modelzoo.engine import Engine, load_checkpoint
    from modelzoo.engine.checkpoint import DTYPES
    from modelzoo.engine.lora import merge_adapter
    from modelzoo.engine.threads import ThreadGovernor, in_throwaway_thread

    governor = ThreadGovernor(settings.ENGINE_THREADS)
    governor.start()
    logger.info("Loading checkpoint %s from %s", checkpoint.name, checkpoint.weights_path())
    loaded = load_checkpoint(checkpoint.weights_path(), device=settings.ENGINE_DEVICE, dtype=DTYPES.get(settings.ENGINE_DTYPE),
                             quantization=settings.ENGINE_QUANTIZATION or None, block_kernels=settings.ENGINE_BLOCK_KERNELS)
    if checkpoint.base_id:
        in_throwaway_thread(merge_adapter)(loaded.model, checkpoint.file_path())
    return Engine(loaded, max_batch_size=settings.ENGINE_MAX_BATCH_SIZE, max_seq_len=settings.ENGINE_MAX_SEQ_LEN,
                  governor=governor)


def _inspect(checkpoint: Checkpoint) -> CheckpointInfo:
    from modelzoo.engine import inspect_checkpoint

    return inspect_checkpoint(checkpoint.weights_path())


def engine_for(checkpoint: Checkpoint) -> Engine:
    """The resident Engine of `checkpoint`, loaded on first use (once per process, even under concurrent calls)."""
    return _acquire(checkpoint, busy=0)


@contextmanager
def serving(checkpoint: Checkpoint) -> Iterator[Engine]:
    """The resident Engine of `checkpoint`, held busy (so never evicted) while the caller's job runs on it."""
    engine = _acquire(checkpoint, busy=1)
    try:
        yield engine
    finally:
        with _state_lock:
            resident = _residents[_key(checkpoint)]
            resident.busy -= 1
            resident.last_used = time.monotonic()


def _acquire(checkpoint: Checkpoint, *, busy: int) -> Engine:
    key = _key(checkpoint)
    while True:
        with _state_lock:
            if key in _engines:
                resident = _residents[key]
                resident.busy += busy
                resident.last_used = time.monotonic()
                return _engines[key]
        with _load_lock:
            with _state_lock:
                if key in _engines:
                    continue  # another thread loaded it while this one waited
            need = estimated_bytes(checkpoint)
            _evict_for(need)
            engine = _load_engine(checkpoint)
            with _state_lock:
                _engines[key] = engine
                _residents[key] = Resident(key, need, last_used=time.monotonic(), busy=busy)
        _notify("loaded", key[0])
        return engine


def _evict_for(need_bytes: int) -> None:
    budget = memory_budget_bytes()
    with _state_lock:
        fits = sum(r.size_bytes for r in _residents.values()) + need_bytes <= budget
    demand = {} if fits else demand_by_checkpoint()
    with _state_lock:
        victims = choose_evictions(list(_residents.values()), need_bytes=need_bytes, budget_bytes=budget,
                                   demand={key: demand.get(key[0], 0) for key in _residents})
        evicted = [_engines.pop(key) for key in victims]
        for key in victims:
            del _residents[key]
    for key, engine in zip(victims, evicted):
        logger.info("Evicting checkpoint %s to make room for %d bytes", key[0], need_bytes)
        engine.close()
        _notify("evicted", key[0])


def add_listener(listener: Callable[[str, int], None]) -> None:
    """Call `listener(event, checkpoint_id)` after each load ("loaded") and eviction ("evicted")."""
    _listeners.append(listener)


def _notify(event: str, checkpoint_id: int) -> None:
    for listener in list(_listeners):
        try:
            listener(event, checkpoint_id)
        except Exception:
            logger.exception("Pool listener failed on %s of checkpoint %s", event, checkpoint_id)


def estimated_bytes(checkpoint: Checkpoint) -> int:
    """Weights in the compute dtype plus the engine's 16-bit KV cache, from the checkpoint's metadata."""
    info = checkpoint_info(checkpoint)
    config = info.config
    weights = info.parameter_count * _bytes_per_parameter()
    head_dim = config.dim // config.n_heads
    positions = min(config.max_seq_len, settings.ENGINE_MAX_SEQ_LEN)
    kv_cache = 2 * config.n_layers * settings.ENGINE_MAX_BATCH_SIZE * config.n_kv_heads * positions * head_dim * 2
    return int(weights) + kv_cache


def _bytes_per_parameter() -> float:
    """What the engine stores per weight: bfloat16 on CUDA; on CPU at most 4 bytes, float32 or FBGEMM's packed
    float16 padded to blocks of 512 inputs plus the float16 embedding table (engine/packed_linear.py: 3.2 bytes
    a weight for SmolLM2-135M, whose layers take 576 inputs; a GGUF's Q4_1 / Q8_0 weights computed from their
    blocks take less, engine/block_linear.py); int8 ~1 byte plus scales, int4 ~0.5 plus per-group scales and
    zeros."""
    if settings.ENGINE_QUANTIZATION:
        return {"int8": 1.1, "int4": 0.75}[settings.ENGINE_QUANTIZATION]
    if settings.ENGINE_DTYPE == "bfloat16" or (not settings.ENGINE_DTYPE and _device_type() == "cuda"):
        return 2
    return 4


def memory_budget_bytes() -> int:
    if settings.WORKER_MEMORY_BUDGET_BYTES:
        return settings.WORKER_MEMORY_BUDGET_BYTES
    if _device_type() == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory * 0.9)
    return 8 * 1024**3


def _device_type() -> str:
    if settings.ENGINE_DEVICE:
        return settings.ENGINE_DEVICE.split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def set_demand_source(source: Callable[[], dict[int, int]] | None) -> None:
    """Where eviction reads demand: a callable giving {checkpoint id: jobs waiting for it or asked for lately}.
    The worker sets it at start (the jobs layer knows jobs; this module does not); without one, eviction goes
    by recency alone."""
    global _demand_source
    _demand_source = source


def demand_by_checkpoint() -> dict[int, int]:
    return _demand_source() if _demand_source is not None else {}


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
    return window_for(int(checkpoint_info(checkpoint).config.max_seq_len))


def window_for(context_length: int) -> int:
    """The tokens a job may use on a checkpoint whose own context length is `context_length` (the rule of
    context_window, for callers that have the stored length, like the admin's list, and no file to read)."""
    return min(context_length, settings.ENGINE_MAX_SEQ_LEN)


def loaded_checkpoint_ids() -> list[int]:
    return sorted(pk for pk, _ in _engines)


def resident_sizes() -> dict[int, int]:
    """Estimated bytes per resident checkpoint id."""
    with _state_lock:
        return {key[0]: resident.size_bytes for key, resident in _residents.items()}


def resident_bytes() -> int:
    """The memory the resident engines are estimated to take."""
    with _state_lock:
        return sum(r.size_bytes for r in _residents.values())


def clear() -> None:
    """Drop every cached engine and info (closing the engines). For tests and reloads."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
        _residents.clear()
        _infos.clear()
        _key_locks.clear()
    for engine in engines:
        engine.close()

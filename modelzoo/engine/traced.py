"""Decode steps as TorchScript graphs: the same operations without Python in between.

A one-stream decode step on CPU is ~1,500 small operations around ~120 matrix products, and
running them from Python costs about as much as the products themselves. torch.jit.trace
records one step's operations once; the recorded graph then runs them from C++, with the
same kernels on the same shapes, so its logits are bitwise those of the eager step (the
tests compare them) and a request's tokens do not depend on which of the two ran. Measured on
2 cores with SmolLM2-135M: one stream 60-69 -> 39-40 ms per step; 4 rows 72-83 -> 51-58 ms.

A graph holds one batch size (the tracer records some reshapes with the batch as a constant)
in slots 0..B-1 (`Step.first_slots`); the number of cache positions read varies freely. A graph
over FBGEMM's packed products costs ~0.1 GB (75-125 MB measured) that torch.jit keeps for the life
of the process; over products from GGUF blocks (block_linear.py) no measurable memory. So by
default every batch size is recorded where no product is packed, and otherwise one stream,
where Python's share of a step is largest. A graph is recorded in a thread of its own on scratch caches (the caches
are inputs of the graph, so recording writes nothing a request reads; ~2 s) while the engine
goes on eagerly, and is used from the step after it is ready. The thread ends with the
recording, so no OpenMP team outlives it (threads.py).
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import replace

import torch
from torch import nn

from .model import KVCache, Step, Transformer
from .packed_linear import PackedFloat16Linear

log = logging.getLogger(__name__)

# The tracer's notes on the sizes it records as constants (the batch size, by design), and its deprecation: for a
# pinned torch, a recording of ~2 s beats torch.compile here (~40 s per shape, and ~11% less time per step with the
# FBGEMM product as a custom operator; README, Engine speed).
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=DeprecationWarning)

#: Positions of the scratch caches a graph is recorded on (any length works; reads vary with the step).
SCRATCH_POSITIONS = 64


class _DecodeStep(nn.Module):
    """model(tokens, step) with the step's tensors and every cache buffer as inputs (rows in slots 0..B-1)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor,
                read_buffer: torch.Tensor, *buffers: torch.Tensor) -> torch.Tensor:
        caches = [KVCache.of(k, v, read_buffer) for k, v in zip(buffers[::2], buffers[1::2], strict=True)]
        step = Step(positions=positions, slots=slots, mask=mask, caches=caches, first_slots=True)
        return self.model(tokens, step)


def _inputs(tokens: torch.Tensor, step: Step, read_buffer: torch.Tensor) -> tuple[torch.Tensor, ...]:
    buffers = [b for cache in step.caches for b in (cache.k, cache.v)]
    return tokens, step.positions, step.slots, step.mask, read_buffer, *buffers


def default_batch_sizes(model: nn.Module, max_batch_size: int) -> frozenset[int]:
    """The batch sizes whose decode steps are recorded by default: all where no product is packed for FBGEMM,
    otherwise one stream (module docstring)."""
    if any(isinstance(m, PackedFloat16Linear) for m in model.modules()):
        return frozenset({1})
    return frozenset(range(1, max_batch_size + 1))


class TracedDecode:
    """model(tokens, step) that runs a decode step of a recorded batch size through its graph once it exists
    (eagerly until then); called from the engine thread while recordings run. Only for caches that read into
    a shared buffer (float16 caches under float32 attention, the CPU default). `close()` waits for a
    recording under way."""

    def __init__(self, model: Transformer, batch_sizes: frozenset[int]) -> None:
        self.model = model
        self.batch_sizes = batch_sizes
        self._graphs: dict[int, torch.jit.ScriptModule] = {}
        self._recording: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, tokens: torch.Tensor, step: Step) -> torch.Tensor:
        batch, read_buffer = tokens.shape[0], step.caches[0].read_buffer
        if tokens.shape[1] != 1 or not step.first_slots or batch not in self.batch_sizes or read_buffer is None:
            return self.model(tokens, step)
        graph = self._graphs.get(batch)
        if graph is None:
            self._record_later(batch, step)
            return self.model(tokens, step)
        return graph(*_inputs(tokens, step, read_buffer))

    def ready(self) -> set[int]:
        """The batch sizes that have a graph."""
        return set(self._graphs)

    def wait(self) -> None:
        """Until the recordings under way are done."""
        with self._lock:
            threads = list(self._recording.values())
        for thread in threads:
            thread.join()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.wait()

    def _record_later(self, batch: int, step: Step) -> None:
        with self._lock:
            if self._closed or batch in self._recording:
                return
            thread = threading.Thread(target=self._record, args=(batch, step), name=f"llm-trace-{batch}", daemon=True)
            self._recording[batch] = thread
        thread.start()

    def _record(self, batch: int, step: Step) -> None:
        template = step.caches[0]
        try:
            with torch.inference_mode():
                _, heads, _, head_dim = template.k.shape
                read_buffer = torch.empty(2, batch * heads * SCRATCH_POSITIONS * head_dim,
                                          dtype=template.read_buffer.dtype, device=template.k.device)
                caches = [KVCache(batch, heads, SCRATCH_POSITIONS, head_dim, template.k.dtype, template.k.device,
                                  read_buffer) for _ in step.caches]
                length = min(step.length, SCRATCH_POSITIONS)
                scratch = replace(step, caches=caches, positions=torch.zeros_like(step.positions),
                                  mask=step.mask[..., :length])
                tokens = torch.zeros(batch, 1, dtype=torch.long, device=template.k.device)
                graph = torch.jit.trace(_DecodeStep(self.model), _inputs(tokens, scratch, read_buffer),
                                        check_trace=False)
            self._graphs[batch] = graph
            log.info("decode step for %d rows recorded", batch)
        except Exception:  # the eager step goes on serving this batch size
            log.exception("recording the decode step for %d rows failed", batch)

"""The batched engine, ids in and ids out: one thread runs continuous batching over a preallocated KV cache.

Callers in any thread call `generate()`, which queues a request and blocks until it
is finished. Between decode steps the engine thread retires finished requests
(freeing their cache slot) and admits waiting ones (one prefill per newcomer);
each decode step runs every active request in one forward pass, each
row at its own position. Each forward pass gets one model.Step (positions, slots,
mask, caches) built here.

Text is the caller's: detokenizing, stop strings and streamed text live in
text_stream.py, whose generate_text() wraps generate() and stops a request through
its on_token callback.

Memory: the KV cache is per layer (slots, n_kv_heads, max_seq_len, head_dim) for k
and v. By default max_seq_len is min(context length, 1024) and the cache is float16
on CPU (bf16 on CUDA): for SmolLM2-135M with 16 slots that is at most 16 x 1024
positions x 30 layers x 2 x 3 heads x 64 x 2 bytes = 377 MB, taken page by page as
positions are written (model.lazy_zeros), plus one float32 buffer that torch's attention
path reads the rows into (our kernel reads the cache in place). The weights of the bundled
Q4_1 file take ~0.17 GB on CPU as its own blocks plus the float16 embedding table
(block_linear.py), ~0.43 GB as FBGEMM's packed float16 (packed_linear.py), and torch ~0.25
GB; a recorded step over packed products (traced.py) ~0.1 GB more.

Slots are handed out lowest first, so a batch usually occupies slots 0..B-1 and each
layer reads its cache rows as a view instead of a gather plus a copy; the decode step
profile showed the gather at ~9% of a step.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from .checkpoint import LoadedCheckpoint
from .model import KVCache, Step
from .sampling import SamplingParams, TokenLogprob, make_generator, sample, token_logprobs
from .threads import ThreadGovernor
from .traced import TracedDecode, default_batch_sizes

log = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LEN = 1024


#: Called from the engine thread with each generated token id (never the end-of-sequence one);
#: returning True ends the request with finish_reason "stop" (the caller saw a stop string). A request whose
#: params.logprobs is not None calls it as on_token(token_id, TokenLogprob) instead.
OnToken = Callable[..., bool | None]


@dataclass
class GenerationResult:
    prompt_token_ids: list[int]
    token_ids: list[int]  # the generated ids, without an end-of-sequence token
    finish_reason: str  # "stop" (end of sequence, or on_token said so) | "length" | "cancelled" | "timeout"
    ttft_s: float
    elapsed_s: float
    tokens_per_s: float  # decode tokens/s after the first token
    batch_size: int  # the largest batch this request ran in
    logprobs: list[TokenLogprob] | None = None  # one per token id when params.logprobs was set


def prefill_step(lengths: torch.Tensor, slots: torch.Tensor, caches: list[KVCache]) -> Step:
    """The Step of one padded prefill: B prompts of `lengths` (B,) padded to T = max length, written to
    cache `slots` (B,) at positions 0..T-1; only each prompt's last position gives logits."""
    B, T = lengths.shape[0], int(lengths.max())
    j = torch.arange(T, device=lengths.device)
    # query t of row b sees keys j <= t inside its own prompt; padded positions are never read later
    # because decode overwrites them before attending to them.
    mask = (j[None, None, :] <= j[None, :, None]) & (j[None, None, :] < lengths[:, None, None])  # (B, T, T)
    return Step(positions=j.expand(B, T), slots=slots, mask=mask[:, None], caches=caches, logit_index=lengths - 1)


#: Decode attention reads the cache in spans of this many positions. Sums over a span (softmax, the product
#: with v) are computed in the same order whatever the batch's longest row, so a row's bits never depend on it.
ATTENTION_SPAN = 64


def decode_step(positions: torch.Tensor, slots: torch.Tensor, caches: list[KVCache], *, first_slots: bool) -> Step:
    """The Step of one decode step: row b's one new token goes to cache slot slots[b] at positions[b] (B,),
    and attends to its positions 0..positions[b].

    Every row reads S positions, S the longest row's length rounded up to ATTENTION_SPAN (at most the cache's
    length); the masked positions add exact zeros. Without the rounding a row alone and the same row beside a
    longer one were reduced over different lengths, whose vectorized sums end in different tails (~1e-5)."""
    longest = int(positions.max()) + 1
    S = min(-(-longest // ATTENTION_SPAN) * ATTENTION_SPAN, caches[0].k.shape[2])
    mask = torch.arange(S, device=positions.device)[None, :] <= positions[:, None]  # (B, S)
    return Step(positions=positions[:, None], slots=slots, mask=mask[:, None, None, :], caches=caches,
                first_slots=first_slots)


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_token: OnToken | None
    should_cancel: Callable[[], bool] | None
    deadline: float | None
    submitted: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: GenerationResult | None = None
    error: BaseException | None = None
    # engine-thread state
    slot: int = -1
    out_ids: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    batch_size: int = 0
    generator: torch.Generator | None = None
    logprobs: list[TokenLogprob] | None = None

    @property
    def position(self) -> int:
        """Where the next input token goes in the cache (prompt + all outputs but the last)."""
        return len(self.prompt_ids) + len(self.out_ids) - 1


class Engine:
    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        *,
        max_batch_size: int = 16,
        max_seq_len: int | None = None,
        kv_cache_dtype: torch.dtype | None = None,
        eos_token_ids: Iterable[int] | None = None,
        governor: ThreadGovernor | None = None,
        recorded_batch_sizes: frozenset[int] | None = None,
    ) -> None:
        """`eos_token_ids` end a request (default: the checkpoint tokenizer's). A `governor` resizes torch's
        thread team between steps as other work on the host comes and goes (threads.ThreadGovernor). Decode
        steps of `recorded_batch_sizes` rows (default: traced.default_batch_sizes) run as recorded graphs once recorded
        (traced.py; on CPU)."""
        self.checkpoint = checkpoint
        self.governor = governor
        self.model = checkpoint.model
        self.eos_token_ids = frozenset(checkpoint.tokenizer.eos_token_ids if eos_token_ids is None else eos_token_ids)
        self.device = checkpoint.device
        self.max_batch_size = max_batch_size
        context = checkpoint.config.max_seq_len
        self.max_seq_len = min(max_seq_len or DEFAULT_MAX_SEQ_LEN, context)
        if kv_cache_dtype is None:
            kv_cache_dtype = torch.float16 if self.device.type == "cpu" else self.model.tok_embeddings.weight.dtype
        self.caches = self.model.make_caches(max_batch_size, self.max_seq_len, kv_cache_dtype)
        if recorded_batch_sizes is None:
            recorded_batch_sizes = default_batch_sizes(self.model, max_batch_size)
        self.decoder = TracedDecode(self.model, recorded_batch_sizes if self.device.type == "cpu" else frozenset())
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._active: list[_Request] = []
        self._free_slots = list(range(max_batch_size))  # a heap: new requests take the lowest free slot
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    # --- caller side -------------------------------------------------------------

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        on_token: OnToken | None = None,
        should_cancel: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> GenerationResult:
        """Generate token ids after `prompt_ids`; blocks the calling thread. Thread-safe.

        `on_token(token_id)` runs on the engine thread for every generated token (see OnToken):
        keep it short, since the whole batch waits for it; an exception it raises fails this
        request only, and is re-raised here. `params.stop` is not looked at: stop strings are
        text, applied by the caller (text_stream.generate_text). `deadline` is a time.monotonic()
        value. Raises ValueError for a prompt that cannot fit, and re-raises any error the
        engine hit on this request.
        """
        prompt_ids = list(prompt_ids)
        if not prompt_ids:
            raise ValueError("empty prompt")
        if len(prompt_ids) + params.max_tokens > self.max_seq_len:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the engine's "
                f"max_seq_len ({self.max_seq_len})"
            )
        vocab = self.checkpoint.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ValueError("prompt token id out of range")
        if self._closed.is_set():
            raise RuntimeError("engine is closed")
        req = _Request(prompt_ids, params, on_token, should_cancel, deadline)
        self._queue.put(req)
        while not req.done.wait(timeout=1.0):
            if not self._thread.is_alive():
                raise RuntimeError("engine thread died")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def close(self) -> None:
        """Stop the engine thread (and a decode step's recording); requests still waiting fail with RuntimeError."""
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            log.warning("engine thread still running 30 s after close()")
        self.decoder.close()

    # --- engine thread -----------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._closed.is_set():
                try:
                    self._step()
                    if self.governor is not None:
                        self.governor.tick()
                except Exception as exc:  # never leave callers hanging
                    log.exception("engine step failed")
                    for req in list(self._active):
                        self._fail(req, exc)
        err = RuntimeError("engine is closed")
        for req in list(self._active):
            self._fail(req, err)
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                self._fail(req, err)

    def _step(self) -> None:
        for newcomer in self._admit():
            # One prefill per prompt, never padded beside others: the attention kernel splits its sums by the
            # padded length, so a prompt prefilled beside a longer one got other bits than alone (~1e-5 in its
            # logits), and one request's tokens must not depend on who else arrived. A long prompt's products
            # are large already, so little is lost; a prompt that fails fails alone.
            self._guarded([newcomer], self._prefill)
        if self._active:
            self._guarded(list(self._active), self._decode)

    def _admit(self) -> list[_Request]:
        """Take waiting requests into free slots; block only when there is nothing to do."""
        admitted: list[_Request] = []
        while self._free_slots:
            try:
                block = not self._active and not admitted
                req = self._queue.get(block=block, timeout=None if block else 0)
            except queue.Empty:
                break
            if req is None:  # close() sentinel
                break
            try:
                reason = self._early_finish(req)
            except Exception as exc:
                self._fail(req, exc)
                continue
            if reason is not None:
                self._finish(req, reason)
                continue
            req.slot = heapq.heappop(self._free_slots)  # lowest first keeps the batch packed in slots 0..B-1
            req.generator = make_generator(req.params)
            self._active.append(req)
            admitted.append(req)
        return admitted

    def _guarded(self, reqs: list[_Request], fn: Callable[[list[_Request]], None]) -> None:
        try:
            fn(reqs)
        except Exception as exc:
            log.exception("forward pass failed for %d requests", len(reqs))
            for req in reqs:
                self._fail(req, exc)

    def _prefill(self, reqs: list[_Request]) -> None:
        """One forward over the prompts of `reqs` (padded to the longest), writing their cache slots."""
        lengths = torch.tensor([len(r.prompt_ids) for r in reqs], device=self.device)  # (B,)
        tokens = torch.zeros(len(reqs), int(lengths.max()), dtype=torch.long, device=self.device)  # (B, T)
        for i, r in enumerate(reqs):
            tokens[i, : len(r.prompt_ids)] = torch.tensor(r.prompt_ids)
        slots = torch.tensor([r.slot for r in reqs], device=self.device)  # (B,)
        logits = self.model(tokens, prefill_step(lengths, slots, self.caches))  # (B, 1, V)
        self._accept(reqs, logits[:, 0])

    def _decode(self, reqs: list[_Request]) -> None:
        """One token for every active request, in one forward pass."""
        reqs.sort(key=lambda r: r.slot)
        B = len(reqs)
        packed = all(r.slot == i for i, r in enumerate(reqs))  # slots 0..B-1: the cache is read as a view
        for r in reqs:
            r.batch_size = max(r.batch_size, B)
        tokens = torch.tensor([[r.out_ids[-1]] for r in reqs], device=self.device)  # (B, 1)
        positions = torch.tensor([r.position for r in reqs], device=self.device)  # (B,)
        slots = torch.tensor([r.slot for r in reqs], device=self.device)  # (B,)
        logits = self.decoder(tokens, decode_step(positions, slots, self.caches, first_slots=packed))  # (B, 1, V)
        self._accept(reqs, logits[:, -1])

    def _accept(self, reqs: list[_Request], logits: torch.Tensor) -> None:
        """Sample one token per row (logits (B, V)), report it, and retire finished rows."""
        greedy = logits.argmax(-1).tolist()
        now = time.monotonic()
        for i, r in enumerate(reqs):
            try:
                p = r.params
                seen = None
                if p.temperature == 0.0 and p.repetition_penalty == 1.0:
                    tok = greedy[i]
                else:
                    seen = torch.tensor(r.prompt_ids + r.out_ids, device=logits.device)
                    tok = sample(logits[i], p, seen, r.generator)
                entry = None
                if p.logprobs is not None:  # per row, so a row's values do not depend on its batch
                    if seen is None:
                        seen = torch.tensor(r.prompt_ids + r.out_ids, device=logits.device)
                    entry = token_logprobs(logits[i], p, seen, tok)
                if r.first_token_at is None:
                    r.first_token_at = now
                    r.batch_size = max(r.batch_size, 1)
                reason = self._advance(r, tok, entry)
                if reason is None:
                    reason = self._early_finish(r)
                if reason is not None:
                    self._finish(r, reason)
            except Exception as exc:
                self._fail(r, exc)

    def _advance(self, r: _Request, tok: int, entry: TokenLogprob | None = None) -> str | None:
        """Add a sampled token; return a finish reason when it ends the request."""
        if tok in self.eos_token_ids and not r.params.ignore_eos:
            return "stop"
        r.out_ids.append(tok)
        if entry is not None:
            if r.logprobs is None:
                r.logprobs = []
            r.logprobs.append(entry)
        if r.on_token is not None and (r.on_token(tok) if entry is None else r.on_token(tok, entry)):
            return "stop"
        if len(r.out_ids) >= r.params.max_tokens:
            return "length"
        return None

    def _early_finish(self, r: _Request) -> str | None:
        if r.should_cancel is not None and r.should_cancel():
            return "cancelled"
        if r.deadline is not None and time.monotonic() >= r.deadline:
            return "timeout"
        return None

    def _release(self, r: _Request) -> None:
        if r in self._active:
            self._active.remove(r)
            heapq.heappush(self._free_slots, r.slot)

    def _finish(self, r: _Request, reason: str) -> None:
        self._release(r)
        end = time.monotonic()
        first = r.first_token_at
        n_after_first = max(len(r.out_ids) - 1, 0)
        decode_time = end - first if first is not None else 0.0
        r.result = GenerationResult(
            prompt_token_ids=list(r.prompt_ids),
            token_ids=list(r.out_ids),
            finish_reason=reason,
            ttft_s=(first - r.submitted) if first is not None else end - r.submitted,
            elapsed_s=end - r.submitted,
            tokens_per_s=n_after_first / decode_time if decode_time > 0 and n_after_first else 0.0,
            batch_size=max(r.batch_size, 1),
            logprobs=list(r.logprobs or []) if r.params.logprobs is not None else None,
        )
        r.done.set()

    def _fail(self, r: _Request, exc: BaseException) -> None:
        self._release(r)
        r.error = exc
        r.done.set()

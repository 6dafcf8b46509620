"""Validate an uploaded checkpoint in a child process with time, memory and output limits.

Parsing a hostile file is not safe in a process that serves jobs: a header can declare counts that make a
reader allocate or loop without end, and Jinja2's sandbox blocks attribute escapes but not the work or memory
a template takes. So the checks run in `python -m modelzoo.validation PATH [BASE]` under rlimits and a
wall-clock timeout; the parent treats a timeout, a crash or anything but one JSON report as a rejection.

The child works in two stages:
1. preflight (modelzoo.engine.preflight), before torch is imported: every count a header declares against the
   file's size, the config against the engine's bounds, special token ids against the vocabulary, the chat
   template under its step and size budget, a LoRA adapter's config and tensors against its base. A hostile
   header is rejected within a second or so, the child's memory a few dozen MiB.
2. the full check: tokenizer, template with the real special tokens, weights loaded strictly (NaN/Inf
   rejected), a short smoke generation.

Memory (RLIMIT_DATA, what the child allocates): it starts at `base_memory_bytes` + 3x the upload, and once the
headers are checked becomes `base_memory_bytes` + the files + BYTES_PER_WEIGHT per weight they declare (a
quantized file expands when dequantized), never above `memory_bytes` (VALIDATION_MEMORY_BYTES), which also
bounds the address space. Pure engine code: no Django here.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

#: Formats that execute code on load; refused before anything reads them.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
SMOKE_TOKENS = 4
REPORT_LIMIT_BYTES = 64 * 1024
SCRATCH_FILE_LIMIT_BYTES = 1024 * 1024
#: Memory per declared weight while it is loaded: its float32 dequantized copy, the float16 result, the NaN check.
BYTES_PER_WEIGHT = 12
MiB = 1024**2


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 300.0
    memory_bytes: int = 8 * 1024**3  # the most the child may use, whatever the file
    cpu_s: int = 600
    base_memory_bytes: int = 512 * MiB  # the child's own (Python, torch, tokenizer), before the checkpoint's


@dataclass(frozen=True)
class Report:
    ok: bool
    reason: str = ""
    format: str = ""
    architecture: str = ""
    quantization: str = ""
    parameter_count: int = 0
    context_length: int = 0
    notes: str = ""  # for the admin, on a checkpoint that is ready all the same
    seconds: float = 0.0  # the child's wall time (set by the parent)
    peak_memory_bytes: int = 0  # the child's peak resident memory (VmHWM, as the child and the parent saw it)


def files_size(path: Path) -> int:
    """Bytes of a checkpoint file, or of the files of a checkpoint folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size if path.exists() else 0


def validate(path: Path, *, base: Path | None = None, limits: Limits = Limits()) -> Report:
    """Check `path` (with `base`: a LoRA adapter folder on that base checkpoint) in a limited child process;
    a Report with ok=False carries the reason for the admin."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return Report(ok=False, reason=f"{path.suffix} files are pickles, which can run code on load; "
                                       "upload GGUF or safetensors instead")
    upload = files_size(path) + (files_size(base) if base else 0)
    start_memory = min(limits.memory_bytes, limits.base_memory_bytes + 3 * upload)

    def apply_limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_DATA, (start_memory, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        # Libraries probe a temporary folder on import; nothing else is written, and only into a scratch folder.
        resource.setrlimit(resource.RLIMIT_FSIZE, (SCRATCH_FILE_LIMIT_BYTES, SCRATCH_FILE_LIMIT_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        run_in_background()

    run_in_background = _import_light("threads").run_in_background

    with tempfile.TemporaryDirectory(prefix="llmsite-validate-") as scratch:
        env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(_child_threads()), "TMPDIR": scratch, "HOME": scratch,
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        command = [sys.executable, "-m", "modelzoo.validation", "--base-memory", str(limits.base_memory_bytes),
                   str(path.resolve())] + ([str(base.resolve())] if base else [])
        child = _run(command, timeout_s=limits.timeout_s, preexec_fn=apply_limits, cwd=scratch, env=env)
    measured: dict[str, Any] = {"seconds": round(child.seconds, 3), "peak_memory_bytes": child.peak_memory_bytes}
    if child.timed_out:
        return Report(ok=False, reason=f"validation took longer than {limits.timeout_s:g} s", **measured)
    output = child.stdout.decode(errors="replace").strip().splitlines()
    if child.returncode != 0 or not output:
        cause = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit status {child.returncode}"
        tail = child.stderr[-400:].decode(errors="replace").strip().splitlines()[-1:] or [""]
        return Report(ok=False, reason=f"validation crashed ({cause}; memory limit {limits.memory_bytes // MiB} MiB) "
                                       f"{tail[0]}".strip(), **measured)
    try:
        report = Report(**json.loads(output[-1]))
        measured["peak_memory_bytes"] = max(child.peak_memory_bytes, report.peak_memory_bytes)
        return replace(report, **measured)
    except (ValueError, TypeError) as error:
        return Report(ok=False, reason=f"validation gave no report ({error})", **measured)


def _child_threads() -> int:
    """The child's torch threads: ENGINE_THREADS, or the engine's automatic policy (light: no torch import)."""
    from django.conf import settings

    configured = getattr(settings, "ENGINE_THREADS", 0) if settings.configured else 0
    return _import_light("threads").host_threads(configured)


@dataclass(frozen=True)
class _Finished:
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float
    peak_memory_bytes: int
    timed_out: bool


def _run(command: list[str], *, timeout_s: float, preexec_fn: Any, cwd: str, env: dict[str, str]) -> _Finished:
    """Run the child to its end (or kill its process group at the timeout), keeping the tail of its output,
    and sample its peak resident memory (VmHWM) while it runs. Not ru_maxrss (getrusage, wait4): Linux counts
    there the pages the child shared with this process between fork and exec, the worker's own size."""
    started = time.monotonic()
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=preexec_fn, cwd=cwd, env=env, start_new_session=True)
    tails = [bytearray(), bytearray()]
    readers = [threading.Thread(target=_drain, args=(stream, tail), daemon=True)
               for stream, tail in zip((child.stdout, child.stderr), tails)]
    for reader in readers:
        reader.start()
    timed_out, peak = False, 0
    while True:  # Popen returned after the exec, so every sample is of the child's own memory
        peak = max(peak, _peak_resident(child.pid))
        pid, status = os.waitpid(child.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - started > timeout_s:
            timed_out = True
            os.killpg(child.pid, signal.SIGKILL)
            pid, status = os.waitpid(child.pid, 0)
            break
        time.sleep(0.02)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    seconds = time.monotonic() - started
    for reader in readers:
        reader.join(timeout=5)
    for stream in (child.stdout, child.stderr):
        stream.close()
    return _Finished(returncode=child.returncode, stdout=bytes(tails[0]), stderr=bytes(tails[1]), seconds=seconds,
                     peak_memory_bytes=peak, timed_out=timed_out)


def _peak_resident(pid: int | str) -> int:
    """VmHWM of a process in bytes (0 when it is gone or /proc is not there)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _drain(stream: IO[bytes], tail: bytearray) -> None:
    """Read a pipe to its end, keeping its last REPORT_LIMIT_BYTES."""
    while chunk := stream.read(65536):
        tail += chunk
        del tail[:-REPORT_LIMIT_BYTES]


# --- the child -------------------------------------------------------------------------------------------------

def _import_light(name: str) -> types.ModuleType:
    """modelzoo.engine.<name> without running modelzoo/engine/__init__.py, which imports torch (seconds on a
    busy host): the package is a bare stand-in while the torch-free modules (headers, config, preflight and
    what they import) load. The real package, imported later, finds them in sys.modules and reuses them."""
    package = "modelzoo.engine"
    if package in sys.modules:
        return importlib.import_module(f"{package}.{name}")
    stand_in = types.ModuleType(package)
    stand_in.__path__ = [str(Path(__file__).resolve().parent / "engine")]
    sys.modules[package] = stand_in
    try:
        return importlib.import_module(f"{package}.{name}")
    finally:
        del sys.modules[package]


def _allow_memory(n_bytes: int, n_elements: int, base_memory: int) -> int:
    """The data limit for what the headers declare (the soft limit, up to the hard one the parent set)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard == resource.RLIM_INFINITY:
        return soft
    need = min(hard, base_memory + n_bytes + BYTES_PER_WEIGHT * n_elements)
    resource.setrlimit(resource.RLIMIT_DATA, (need, hard))
    return need


def _check(path: Path, base: Path | None = None) -> Report:
    """The full check (after preflight): tokenizer, template, weights, a smoke generation."""

    from modelzoo import engine
    from modelzoo.engine import (
        CheckpointError,
        Engine,
        SamplingParams,
        generate_text,
        inspect_checkpoint,
        load_checkpoint,
    )
    from modelzoo.engine.chat_template import check_template
    from modelzoo.engine.lora import merge_adapter

    for name, module in list(sys.modules.items()):  # submodules the preflight loaded under the stand-in
        if name.startswith("modelzoo.engine.") and name.count(".") == 2:
            setattr(engine, name.rsplit(".", 1)[1], module)
    info = inspect_checkpoint(base or path)
    prompt = check_template(info.chat_template.source, special_tokens=info.chat_template.special_tokens)
    prompt_ids = info.tokenizer.encode(prompt)
    if not prompt_ids:
        raise CheckpointError("the tokenizer encoded the chat prompt as nothing")
    loaded = load_checkpoint(base or path, device="cpu")
    if base is not None:
        merge_adapter(loaded.model, path)
    engine_ = Engine(loaded, max_batch_size=1, max_seq_len=min(info.config.max_seq_len, len(prompt_ids) + SMOKE_TOKENS))
    try:  # through the text path the site uses, so the tokenizer must also decode what the model says
        result = generate_text(engine_, info.tokenizer, prompt_ids, SamplingParams(max_tokens=SMOKE_TOKENS))
    finally:
        engine_.close()
    if not all(0 <= token < info.config.vocab_size for token in result.token_ids):
        raise CheckpointError("the smoke generation produced token ids outside the vocabulary")
    return Report(
        ok=True, format="lora" if base else info.format, architecture=getattr(info.config, "arch", "llama"),
        quantization=info.quantization, parameter_count=info.parameter_count,
        context_length=info.config.max_seq_len,
    )


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelzoo.validation")
    parser.add_argument("--base-memory", type=int, default=Limits.base_memory_bytes)
    parser.add_argument("path", type=Path)
    parser.add_argument("base", type=Path, nargs="?")
    args = parser.parse_args(argv)
    CheckpointError = _import_light("errors").CheckpointError  # noqa: N806 (a class)
    memory = resource.getrlimit(resource.RLIMIT_DATA)[0]
    try:
        checked = _import_light("preflight").preflight(args.path, base=args.base)
        memory = _allow_memory(checked.n_bytes, checked.n_elements, args.base_memory)
        report = replace(_check(args.path, args.base), notes="; ".join(checked.notes))
    except CheckpointError as error:  # a check that failed says what is wrong in its own words
        report = Report(ok=False, reason=str(error)[:2000])
    except MemoryError:
        limit = "no limit" if memory == resource.RLIM_INFINITY else f"limit {memory // MiB} MiB"
        report = Report(ok=False, reason=f"validation ran out of memory ({limit}: {args.base_memory // MiB} MiB, the "
                                         f"files and {BYTES_PER_WEIGHT} bytes per weight their headers declare)")
    except Exception as error:  # anything else a hostile file breaks is a rejection too, named by its type
        message = str(error) or type(error).__name__
        report = Report(ok=False, reason=f"{type(error).__name__}: {message}"[:2000])
    report = replace(report, peak_memory_bytes=_peak_resident("self"))
    sys.stdout.write("\n" + json.dumps(report.__dict__) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

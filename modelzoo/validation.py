"""Validate an uploaded checkpoint in a child process with time, memory and output limits.

Parsing a hostile file is not safe in a process that serves jobs: the `gguf` reader can spin for a long time
on a header that declares an absurd array length, and Jinja2's sandbox blocks attribute escapes but not the
work or memory a template takes. So the checks run in `python -m modelzoo.validation PATH` under rlimits
(address space, CPU seconds, no file writes) and a wall-clock timeout; the parent treats a timeout, a crash
or anything but one JSON report as a rejection. Pure engine code: no Django here.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Formats that execute code on load; refused before anything reads them.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
SMOKE_TOKENS = 4
REPORT_LIMIT_BYTES = 64 * 1024
SCRATCH_FILE_LIMIT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 300.0
    memory_bytes: int = 8 * 1024**3
    cpu_s: int = 600


@dataclass(frozen=True)
class Report:
    ok: bool
    reason: str = ""
    format: str = ""
    architecture: str = ""
    quantization: str = ""
    parameter_count: int = 0
    context_length: int = 0


def validate(path: Path, *, base: Path | None = None, limits: Limits = Limits()) -> Report:
    """Check `path` (with `base`: a LoRA adapter folder on that base checkpoint) in a limited child process;
    a Report with ok=False carries the reason for the admin."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return Report(ok=False, reason=f"{path.suffix} files are pickles, which can run code on load; "
                                       "upload GGUF or safetensors instead")

    def apply_limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        # Libraries probe a temporary folder on import; nothing else is written, and only into a scratch folder.
        resource.setrlimit(resource.RLIMIT_FSIZE, (SCRATCH_FILE_LIMIT_BYTES, SCRATCH_FILE_LIMIT_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory(prefix="llmsite-validate-") as scratch:
        env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "TMPDIR": scratch, "HOME": scratch,
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        try:
            child = subprocess.run(
                [sys.executable, "-m", "modelzoo.validation", str(path.resolve())] + ([str(base.resolve())] if base else []),
                capture_output=True, timeout=limits.timeout_s, preexec_fn=apply_limits, cwd=scratch, env=env,
            )
        except subprocess.TimeoutExpired:
            return Report(ok=False, reason=f"validation took longer than {limits.timeout_s:g} s")
    output = child.stdout[-REPORT_LIMIT_BYTES:].decode(errors="replace").strip().splitlines()
    if child.returncode != 0 or not output:
        cause = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit status {child.returncode}"
        tail = child.stderr[-400:].decode(errors="replace").strip().splitlines()[-1:] or [""]
        return Report(ok=False, reason=f"validation crashed ({cause}; memory limit "
                                       f"{limits.memory_bytes // 1024**2} MiB) {tail[0]}".strip())
    try:
        return Report(**json.loads(output[-1]))
    except (ValueError, TypeError) as error:
        return Report(ok=False, reason=f"validation gave no report ({error})")


def _check(path: Path, base: Path | None = None) -> Report:
    """The checks themselves (run in the child): headers, tokenizer, template, weights, a smoke generation."""
    import torch

    from modelzoo.engine import (
        CheckpointError,
        Engine,
        SamplingParams,
        generate_text,
        inspect_checkpoint,
        load_checkpoint,
    )
    from modelzoo.engine.lora import merge_adapter

    info = inspect_checkpoint(base or path)
    prompt = info.chat_template.render([{"role": "user", "content": "Say hello."}], add_generation_prompt=True)
    prompt_ids = info.tokenizer.encode(prompt)
    if not prompt_ids:
        raise CheckpointError("the tokenizer encoded the chat prompt as nothing")
    loaded = load_checkpoint(base or path, device="cpu")
    if base is not None:
        merge_adapter(loaded.model, path)
    for name, tensor in loaded.model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"weight {name} holds NaN or Inf values")
    engine = Engine(loaded, max_batch_size=1, max_seq_len=min(info.config.max_seq_len, len(prompt_ids) + SMOKE_TOKENS))
    try:  # through the text path the site uses, so the tokenizer must also decode what the model says
        result = generate_text(engine, info.tokenizer, prompt_ids, SamplingParams(max_tokens=SMOKE_TOKENS))
    finally:
        engine.close()
    if not all(0 <= token < info.config.vocab_size for token in result.token_ids):
        raise CheckpointError("the smoke generation produced token ids outside the vocabulary")
    return Report(
        ok=True, format="lora" if base else info.format, architecture=getattr(info.config, "arch", "llama"),
        quantization=info.quantization, parameter_count=info.parameter_count,
        context_length=info.config.max_seq_len,
    )


def _main(argv: list[str]) -> int:
    from modelzoo.engine import CheckpointError

    try:
        report = _check(Path(argv[0]), Path(argv[1]) if len(argv) > 1 else None)
    except CheckpointError as error:  # a check that failed says what is wrong in its own words
        report = Report(ok=False, reason=str(error)[:2000])
    except Exception as error:  # anything else a hostile file breaks is a rejection too, named by its type
        message = str(error) or type(error).__name__
        report = Report(ok=False, reason=f"{type(error).__name__}: {message}"[:2000])
    sys.stdout.write("\n" + json.dumps(report.__dict__) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

"""`manage.py generate PROMPT`: one generation through the same prompt builders, pool and engine the workers use."""
from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from generation import limits, prompts
from modelzoo import pool
from modelzoo.models import WEB_TASKS, Checkpoint, Task


class Command(BaseCommand):
    help = "Generate once with a checkpoint (the default one unless --checkpoint) and print the text or JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prompt")
        parser.add_argument("--checkpoint", help="checkpoint name (default: the default checkpoint)")
        parser.add_argument(
            "--task", default=Task.CHAT, choices=[*WEB_TASKS, Task.CHAT],
            help="prompt builder; chat = the checkpoint's chat template with only the user message",
        )
        parser.add_argument("--temperature", type=float)
        parser.add_argument("--max-tokens", type=int)
        parser.add_argument("--seed", type=int)
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._generate(options)
        finally:
            # Stop and join the engine's thread before the interpreter exits: a thread still inside torch at
            # exit aborts the process ("terminate called without an active exception") after the result.
            pool.clear()

    def _generate(self, options: dict[str, Any]) -> None:
        checkpoint = self._checkpoint(options["checkpoint"], options["task"])
        from modelzoo.engine import SamplingParams, generate_text

        task = options["task"]
        defaults = prompts.TASK_DEFAULTS[task]
        temperature = defaults.temperature if options["temperature"] is None else options["temperature"]
        max_tokens = defaults.max_tokens if options["max_tokens"] is None else options["max_tokens"]
        for name, value, bounds in (("--temperature", temperature, limits.TEMPERATURE),
                                    ("--max-tokens", max_tokens, limits.MAX_TOKENS),
                                    ("--seed", options["seed"], limits.SEED)):
            if value is not None and value not in bounds:
                raise CommandError(f"{name} must be in {bounds}, got {value}")
        params = SamplingParams(
            temperature=temperature,
            top_k=defaults.top_k if task != Task.CHAT else 0,
            top_p=defaults.top_p,
            repetition_penalty=defaults.repetition_penalty,
            seed=options["seed"],
            max_tokens=max_tokens,
        )
        try:
            fit = limits.fit_context(checkpoint=checkpoint, task=task, prompt=options["prompt"], max_tokens=max_tokens)
        except limits.ContextTooLong as exc:
            raise CommandError(str(exc)) from None
        prompt_ids = fit.prompt_ids
        load_started = time.monotonic()
        engine = pool.engine_for(checkpoint)
        load_s = time.monotonic() - load_started
        result = generate_text(engine, pool.checkpoint_info(checkpoint).tokenizer, prompt_ids, params)
        if options["json"]:
            self.stdout.write(json.dumps({
                "checkpoint": checkpoint.name,
                "task": task,
                "text": result.text,
                "prompt_token_ids": list(result.prompt_token_ids),
                "token_ids": list(result.token_ids),
                "finish_reason": result.finish_reason,
                "ttft_s": result.ttft_s,
                "elapsed_s": result.elapsed_s,
                "tokens_per_s": result.tokens_per_s,
                "batch_size": result.batch_size,
                "load_s": load_s,
                "params": {"temperature": temperature, "max_tokens": max_tokens, "seed": options["seed"]},
            }))
        else:
            self.stdout.write(result.text)
            self.stderr.write(
                f"[{checkpoint.name}: {len(result.prompt_token_ids)} prompt tokens, {len(result.token_ids)} new, "
                f"ttft {result.ttft_s:.2f} s, {result.tokens_per_s:.1f} tokens/s, {result.finish_reason}]"
            )

    @staticmethod
    def _checkpoint(name: str | None, task: str) -> Checkpoint:
        if name:
            checkpoint = Checkpoint.objects.ready().filter(name=name).first()
            if checkpoint is None:
                names = ", ".join(Checkpoint.objects.ready().values_list("name", flat=True)) or "none"
                raise CommandError(f"no ready checkpoint named {name!r} (ready: {names})")
            return checkpoint
        checkpoint = Checkpoint.default(task=task)
        if checkpoint is None:
            raise CommandError("no ready checkpoint; run migrate (it adds the bundled one)")
        return checkpoint

"""`manage.py finetune --base NAME --data FILE.jsonl --out DIR`: train a LoRA adapter on the CPU or GPU.

Each line of the data is {"prompt": ..., "response": ...}; the loss counts the response tokens only, with the
base's own chat template around the prompt. The adapter is written in the PEFT layout
(adapter_config.json + adapter_model.safetensors).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from modelzoo.models import Checkpoint


class Command(BaseCommand):
    help = "Train a LoRA adapter for a checkpoint of the zoo from prompt/response JSONL."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--base", required=True, help="name of a ready checkpoint")
        parser.add_argument("--data", required=True, type=Path)
        parser.add_argument("--out", required=True, type=Path)
        parser.add_argument("--epochs", type=int, default=1)
        parser.add_argument("--lr", type=float, default=1e-3)
        parser.add_argument("--rank", type=int, default=8)
        parser.add_argument("--alpha", type=float, default=16.0)
        parser.add_argument("--max-len", type=int, default=256)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, base: str, data: Path, out: Path, epochs: int, lr: float, rank: int, alpha: float,
               max_len: int, seed: int, **options) -> None:
        import torch

        from modelzoo.engine import load_checkpoint
        from modelzoo.engine.finetune import finetune
        from modelzoo.engine.lora import save_adapter

        checkpoint = Checkpoint.objects.ready().filter(name=base).first()
        if checkpoint is None:
            raise CommandError(f"no ready checkpoint named {base!r}")
        examples = self._read(data)
        from modelzoo.engine.threads import ThreadGovernor, run_in_background

        run_in_background()  # a worker serving users on this host goes first
        governor = ThreadGovernor(settings.ENGINE_THREADS)
        governor.start()
        loaded = load_checkpoint(checkpoint.file_path(), device=settings.ENGINE_DEVICE, dtype=torch.float32)  # trains in float32
        started = time.monotonic()

        def progress(step: int, total: int, loss: float) -> None:
            filled = int(30 * step / total)
            self.stdout.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] step {step}/{total} loss {loss:.4f}",
                              ending="\n" if step == total else "")
            self.stdout.flush()

        losses = finetune(loaded, examples, epochs=epochs, lr=lr, rank=rank, alpha=alpha, max_len=max_len, seed=seed,
                          on_step=progress, governor=governor)
        save_adapter(loaded.model, out, base_name=checkpoint.name, rank=rank, alpha=alpha)
        self.stdout.write(self.style.SUCCESS(
            f"{len(losses)} steps in {time.monotonic() - started:.1f} s; loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
            f"adapter written to {out}"
        ))

    def _read(self, data: Path) -> list:
        from modelzoo.engine.finetune import Example

        examples = []
        for number, line in enumerate(data.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                examples.append(Example(prompt=str(row["prompt"]), response=str(row["response"])))
            except (ValueError, KeyError, TypeError) as error:
                raise CommandError(f"{data}:{number}: expected {{\"prompt\": ..., \"response\": ...}} ({error})") from None
        if not examples:
            raise CommandError(f"{data} holds no examples")
        return examples

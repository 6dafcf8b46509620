"""The bundled SmolLM2 row gets the architecture validation reports for the same file ("llama", the GGUF's
general.architecture): 0002 created the row before the field existed (0003), so the admin showed "-" for the
bundled checkpoint and "llama" for a byte-identical upload."""
from django.db import migrations

BUNDLED_PATH = "bundled:smollm2"
ARCHITECTURE = "llama"


def set_architecture(apps, schema_editor):
    Checkpoint = apps.get_model("modelzoo", "Checkpoint")
    Checkpoint.objects.filter(path=BUNDLED_PATH, architecture="").update(architecture=ARCHITECTURE)


class Migration(migrations.Migration):
    dependencies = [("modelzoo", "0005_task_defaults")]
    operations = [migrations.RunPython(set_architecture, migrations.RunPython.noop)]

"""Site-wide guards: no model change without a migration; the bundled checkpoint exists after migrate."""
from __future__ import annotations

import pytest
from django.core.management import call_command

from modelzoo.models import BUNDLED_SMOLLM2, Checkpoint

pytestmark = pytest.mark.django_db


def test_it_has_no_missing_migrations():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_it_has_the_bundled_checkpoint_as_the_ready_default():
    checkpoint = Checkpoint.objects.get(is_default=True)
    assert (checkpoint.name, checkpoint.path, checkpoint.status, checkpoint.format) == (
        "SmolLM2-135M-Instruct-Q4_1", BUNDLED_SMOLLM2, "ready", "gguf")
    assert Checkpoint.default() == checkpoint
    path = checkpoint.file_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()
    assert path.stat().st_size == checkpoint.size


def test_it_resolves_other_paths_as_given():
    assert str(Checkpoint(path="/models/ft.gguf").file_path()) == "/models/ft.gguf"

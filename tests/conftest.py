"""Shared unit-level fixtures: an owner, another user, their signed-in clients, the bundled checkpoint, jobs."""
from __future__ import annotations

import importlib
from typing import Any, Callable

import pytest
from django.test import Client

from generation.models import Job
from modelzoo.models import Checkpoint


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="alice-password-1")


@pytest.fixture
def other(django_user_model):
    return django_user_model.objects.create_user(username="bob", password="bob-password-1")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser(username="root", password="root-password-1")


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def owner_client(owner) -> Client:
    return signed_in(owner)


@pytest.fixture
def other_client(other) -> Client:
    return signed_in(other)


@pytest.fixture
def staff_client(staff) -> Client:
    return signed_in(staff)


@pytest.fixture
def checkpoint(db) -> Checkpoint:
    """The bundled SmolLM2 row the data migration creates (default, ready); recreated if a transactional
    test flushed it."""
    existing = Checkpoint.objects.filter(is_default=True).first()
    if existing is not None:
        return existing
    bundled = importlib.import_module("modelzoo.migrations.0002_bundled_smollm2").BUNDLED
    return Checkpoint.objects.create(**bundled)


@pytest.fixture
def make_job(owner, checkpoint) -> Callable[..., Job]:
    def make(**fields: Any) -> Job:
        values: dict[str, Any] = {
            "owner": owner,
            "task": Job.Task.QA,
            "prompt": "What is the capital of France?",
            "checkpoint": checkpoint,
            "max_tokens": 16,
        }
        values.update(fields)
        return Job.objects.create(**values)

    return make

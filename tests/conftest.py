"""Shared fixtures: an owner, another user, their signed-in clients, the owner's API key, the bundled checkpoint,
jobs, an empty Redis and a checkpoint store of the test's own; and the markers the folders give their tests."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from generation import services
from generation.models import Job
from llmsite import redis_client
from modelzoo.models import Checkpoint

TESTS = Path(__file__).resolve().parent
# Every test under these folders gets the marker of the same name (registered in pyproject.toml), so
# `-m "not integration and not browser"` selects the unit tests without a marker written on each test.
MARKED_FOLDERS = ("integration", "browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:  # a test file outside tests/
            continue
        if folder in MARKED_FOLDERS:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(autouse=True)
def fast_password_hashing(request: pytest.FixtureRequest) -> None:
    """Unit tests hash passwords with MD5: the production PBKDF2 costs ~0.3 s per user made or signed in on the
    test machine, most of a unit test's time. Integration and browser tests keep the production hashers,
    since the site in a child process checks the passwords of users the test made."""
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("browser"):
        return
    settings = request.getfixturevalue("settings")
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


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
def secret(owner) -> str:
    """The owner's API key, in clear (as shown once on the account page)."""
    return services.api_key_create(owner=owner, name="tests")[1]


#: The id the bundled row had when a test first saw it (the data migration's row).
_bundled_id: dict[str, int] = {}


@pytest.fixture
def checkpoint(db) -> Checkpoint:
    """The bundled SmolLM2 row the data migration creates (default, ready); recreated with the same id if a
    transactional test flushed it, so that a worker shared by several tests (tests.live_services) finds the
    model it holds (its pool is keyed by id and path) instead of loading it again under a new id."""
    bundled = importlib.import_module("modelzoo.migrations.0002_bundled_smollm2").BUNDLED
    existing = Checkpoint.objects.filter(is_default=True).first()
    if existing is None:
        pk = _bundled_id.get("id")
        if pk is not None and Checkpoint.objects.filter(pk=pk).exists():
            pk = None
        existing = Checkpoint.objects.create(pk=pk, **bundled)
    if existing.path == bundled["path"]:
        _bundled_id.setdefault("id", existing.pk)
    return existing


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


@pytest.fixture
def empty_redis() -> Iterator[None]:
    """The test run's Redis (tests.live_services), emptied before and after the test: no worker heartbeats,
    queues or streams of other tests. A module that needs it for every test says
    `pytestmark = pytest.mark.usefixtures("empty_redis")`."""
    redis_client.client().flushdb()
    yield
    redis_client.client().flushdb()


@pytest.fixture
def storage(settings, tmp_path: Path) -> Path:
    """A checkpoint store (CHECKPOINT_DIR) of this test's own."""
    settings.CHECKPOINT_DIR = tmp_path / "store"
    return settings.CHECKPOINT_DIR

"""Writes of the model zoo: store an uploaded checkpoint, validate it off the request, make it a default, retire it."""
from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from modelzoo import validation
from modelzoo.archive import ArchiveError, ArchiveLimits, extract_checkpoint_zip
from modelzoo.models import WEB_TASKS, Checkpoint, TaskDefault
from modelzoo.pickles import pickle_refusal

logger = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024**2
#: A row 'validating' for longer than the validation's time limit plus this was left by a worker that died
#: mid-validation; a redelivered task may claim it again.
VALIDATION_GRACE_S = 120
#: The largest value of the integer columns a report fills, on every database (PostgreSQL's integer, bigint).
_COLUMN_MAXIMA = {"context_length": 2**31 - 1, "parameter_count": 2**63 - 1}

#: One validation at a time in a worker process: each runs a child that may take gigabytes. Held around the
#: claim, so a busy worker leaves the row 'uploaded' for another worker or a retry (see tasks.py).
_validation_slot = threading.Lock()


class UploadError(ValueError):
    """An upload refused before it is stored (the message is for the admin)."""


class ValidationBusy(RuntimeError):
    """This process is validating another checkpoint; try again later."""


def _safe_file_name(name: str) -> str:
    """The upload's base name with anything but letters, digits, dot, dash and underscore replaced."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name).lstrip(".")
    return base or "checkpoint"


def checkpoint_store(
    *, name: str, source: BinaryIO, file_name: str, uploaded_by: Any = None, notes: str = "",
    base: Checkpoint | None = None, queue_validation: bool = True,
) -> Checkpoint:
    """Stream `source` into CHECKPOINT_DIR/<id>/, hashing as it goes, and (by default) queue its validation.

    Pickle formats are refused before a byte is written; so is anything over CHECKPOINT_MAX_UPLOAD_BYTES.
    With `base`, the upload is a LoRA adapter (.zip in the PEFT layout) for that checkpoint.
    """
    if refusal := pickle_refusal(file_name):
        raise UploadError(refusal)
    with transaction.atomic():
        checkpoint = Checkpoint.objects.create(
            name=name, format=Checkpoint.Format.LORA if base else Checkpoint.Format.GGUF, path="",
            uploaded_by=uploaded_by, notes=notes, base=base, status=Checkpoint.Status.UPLOADED,
        )
        folder = Path(settings.CHECKPOINT_DIR) / str(checkpoint.pk)
        target = folder / _safe_file_name(file_name)
        folder.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        try:
            with target.open("wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > settings.CHECKPOINT_MAX_UPLOAD_BYTES:
                        raise UploadError(f"the file is larger than {settings.CHECKPOINT_MAX_UPLOAD_BYTES} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        checkpoint.path, checkpoint.sha256, checkpoint.size = str(target), digest.hexdigest(), size
        checkpoint.save(update_fields=["path", "sha256", "size"])
        if queue_validation:
            transaction.on_commit(lambda: _enqueue_validation(checkpoint))
    return checkpoint


def _enqueue_validation(checkpoint: Checkpoint) -> None:
    from modelzoo.tasks import validate_checkpoint

    try:
        validate_checkpoint.delay(checkpoint.pk)
    except Exception as error:  # broker down: the admin sees why, and can validate again later
        logger.warning("Could not queue validation of checkpoint %s: %s", checkpoint.pk, error)
        Checkpoint.objects.filter(pk=checkpoint.pk).update(
            status_reason=f"validation not queued yet: the job queue is unreachable ({error})"
        )


def checkpoint_validate(*, checkpoint_id: int, wait: bool = True) -> Checkpoint | None:
    """uploaded -> validating -> ready | rejected (with the reason). None when it was not waiting for this.

    One validation runs at a time per process: with `wait=False` a busy process raises ValidationBusy before
    it claims the row. Whatever goes wrong once the row is claimed ends it 'rejected' with
    "validation failed (...)", never 'validating' for good; a row a dead worker left 'validating' is claimed
    again once it is older than the validation's time limit (and VALIDATION_GRACE_S)."""
    if not _validation_slot.acquire(blocking=wait):
        raise ValidationBusy("another checkpoint is being validated in this process")
    try:
        now = timezone.now()
        stale = now - timedelta(seconds=settings.VALIDATION_TIMEOUT_S + VALIDATION_GRACE_S)
        left_by_a_dead_worker = Q(status=Checkpoint.Status.VALIDATING) & (
            Q(validation_started__lt=stale) | Q(validation_started__isnull=True)
        )
        claimed = Checkpoint.objects.filter(
            Q(status=Checkpoint.Status.UPLOADED) | left_by_a_dead_worker, pk=checkpoint_id
        ).update(status=Checkpoint.Status.VALIDATING, status_reason="", validation_started=now)
        if not claimed:
            return None
        try:
            _validate_claimed(Checkpoint.objects.get(pk=checkpoint_id))
        except Exception as error:  # a bug or a lost file: the row must not stay 'validating'
            logger.exception("Validation of checkpoint %s failed", checkpoint_id)
            _reject(checkpoint_id, f"validation failed ({type(error).__name__}: {error})")
        return Checkpoint.objects.get(pk=checkpoint_id)
    finally:
        _validation_slot.release()


def _reject(checkpoint_id: int, reason: str) -> None:
    Checkpoint.objects.filter(pk=checkpoint_id).update(status=Checkpoint.Status.REJECTED, status_reason=reason[:4000])


def _validate_claimed(checkpoint: Checkpoint) -> None:
    if checkpoint.base_id and (checkpoint.base.format == Checkpoint.Format.LORA or not checkpoint.base.is_ready):
        _reject(checkpoint.pk, f"the base {checkpoint.base.name!r} is {checkpoint.base.get_format_display()}, "
                               f"{checkpoint.base.status}: an adapter's base must be a ready model of the zoo")
        return
    try:
        checkpoint = _unpack_if_archive(checkpoint)
    except ArchiveError as error:
        _reject(checkpoint.pk, str(error))
        return
    limits = validation.Limits(
        timeout_s=settings.VALIDATION_TIMEOUT_S, memory_bytes=settings.VALIDATION_MEMORY_BYTES,
        cpu_s=settings.VALIDATION_TIMEOUT_S * 2, base_memory_bytes=settings.VALIDATION_BASE_MEMORY_BYTES,
    )
    base = checkpoint.base.file_path() if checkpoint.base_id else None
    report = validation.validate(checkpoint.file_path(), base=base, limits=limits)
    logger.info("Validated checkpoint %s in %.1f s, peak memory %d MiB: %s", checkpoint.name, report.seconds,
                report.peak_memory_bytes // 1024**2, "ready" if report.ok else report.reason)
    for column, maximum in _COLUMN_MAXIMA.items():
        if report.ok and not 0 <= getattr(report, column) <= maximum:
            report = validation.Report(ok=False, reason=f"{column} {getattr(report, column)} does not fit the "
                                                        f"database (at most {maximum})")
    if not report.ok:
        _reject(checkpoint.pk, report.reason)
        logger.warning("Checkpoint %s rejected: %s", checkpoint.name, report.reason)
        return
    notes = report.notes
    if notes and checkpoint.base_id:
        notes = notes.replace("the zoo checkpoint chosen as its base", f"the zoo checkpoint {checkpoint.base.name!r}")
    Checkpoint.objects.filter(pk=checkpoint.pk).update(
        status=Checkpoint.Status.READY, status_reason=notes, format=report.format,
        architecture=report.architecture[:40], quantization=report.quantization[:40],
        parameter_count=report.parameter_count, context_length=report.context_length,
    )


def _unpack_if_archive(checkpoint: Checkpoint) -> Checkpoint:
    """A .zip upload becomes its model folder beside it (the archive is then removed)."""
    archive = checkpoint.file_path()
    if archive.suffix.lower() != ".zip":
        return checkpoint
    adapter = checkpoint.format == Checkpoint.Format.LORA
    destination = archive.parent / ("adapter" if adapter else "model")
    # The folder is this row's (CHECKPOINT_DIR/<id>/); one already there was left by an earlier database
    # that had a checkpoint with the same id, and would make the extraction fail.
    shutil.rmtree(destination, ignore_errors=True)
    folder = extract_checkpoint_zip(
        archive, destination, adapter=adapter,
        limits=ArchiveLimits(max_total_bytes=settings.CHECKPOINT_MAX_UNPACKED_BYTES),
    )
    Checkpoint.objects.filter(pk=checkpoint.pk).update(
        path=str(folder), format=Checkpoint.Format.LORA if adapter else Checkpoint.Format.SAFETENSORS
    )
    archive.unlink()  # after the row points at the folder, so a retry after a crash finds the files
    checkpoint.refresh_from_db()
    return checkpoint


def checkpoint_make_default(*, checkpoint: Checkpoint, task: str | None = None) -> None:
    """The default for one task (code / qa / summarize), or the overall default for tasks without their own.
    Only a ready checkpoint can be either."""
    if not checkpoint.is_ready:
        raise ValueError(f"{checkpoint.name} is {checkpoint.status}, not ready")
    if task is not None:
        if task not in WEB_TASKS:
            raise ValueError(f"unknown task {task!r}")
        TaskDefault.objects.update_or_create(task=task, defaults={"checkpoint": checkpoint})
        return
    with transaction.atomic():
        Checkpoint.objects.filter(is_default=True).exclude(pk=checkpoint.pk).update(is_default=False)
        Checkpoint.objects.filter(pk=checkpoint.pk).update(is_default=True)


def checkpoint_retire(*, checkpoint: Checkpoint) -> None:
    """No new jobs on it (it stops being a default); earlier jobs keep pointing at it in the history."""
    with transaction.atomic():
        Checkpoint.objects.filter(pk=checkpoint.pk).update(status=Checkpoint.Status.RETIRED, is_default=False)
        TaskDefault.objects.filter(checkpoint=checkpoint).delete()

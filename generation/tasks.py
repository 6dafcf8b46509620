"""Celery tasks: thin wrappers over services. Arguments are ids, never ORM objects."""
from __future__ import annotations

from celery import shared_task


@shared_task(bind=True, acks_late=True, name="generation.run_job", ignore_result=True)
def run_job(self, job_id: int) -> None:
    """Run one job. Safe to deliver twice: services.job_claim lets only one delivery do the work, and a
    message the broker redelivers after its worker died (acks_late) re-claims the job up to JOB_MAX_ATTEMPTS."""
    from generation.services import job_run

    delivery_info = self.request.delivery_info or {}
    job_run(job_id=job_id, redelivered=bool(delivery_info.get("redelivered")))

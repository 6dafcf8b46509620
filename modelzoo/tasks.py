from celery import shared_task

#: How long a validation waits when its worker is validating another checkpoint.
BUSY_RETRY_S = 15


@shared_task(bind=True, acks_late=True, max_retries=None)
def validate_checkpoint(self, checkpoint_id: int) -> None:
    """Validate an upload off the request (a thin wrapper: the work is in services.checkpoint_validate).

    One validation per worker process at a time: a worker busy with another one hands this one back to the
    queue instead of holding one of its threads (which serve jobs meanwhile) until the other ends."""
    from modelzoo.services import ValidationBusy, checkpoint_validate

    try:
        checkpoint_validate(checkpoint_id=checkpoint_id, wait=False)
    except ValidationBusy as busy:
        raise self.retry(countdown=BUSY_RETRY_S, exc=busy) from busy

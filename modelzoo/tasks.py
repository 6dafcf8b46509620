from celery import shared_task


@shared_task(acks_late=True)
def validate_checkpoint(checkpoint_id: int) -> None:
    """Validate an upload off the request (a thin wrapper: the work is in services.checkpoint_validate)."""
    from modelzoo.services import checkpoint_validate

    checkpoint_validate(checkpoint_id=checkpoint_id)

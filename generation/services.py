"""What a user or admin can do: create, cancel, delete and replay jobs, manage API keys. Views, the API, the
admin and tests call these; the worker side of a job lives in runner."""
from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

from django.db import transaction
from django.utils import timezone

from generation import chat, confidence, limits, prompts, streams
from generation.fleet import queues
from generation.models import ApiKey, Conversation, Job
from modelzoo.models import Checkpoint

logger = logging.getLogger(__name__)


# --- create --------------------------------------------------------------------------------------------------


def job_create(
    *,
    owner: Any,
    task: str,
    prompt: str,
    checkpoint: Checkpoint,
    context: str = "",
    options: dict | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_tokens: int = 256,
    seed: int | None = None,
    repetition_penalty: float = 1.0,
    prompt_tokens: int | None = None,
    source: str = Job.Source.WEB,
    conversation: Conversation | None = None,
) -> Job:
    """Create a queued job and enqueue it once the transaction commits.

    Input is trusted (JobForm validated it). A web job (the job form, a conversation turn, their continuations)
    also keeps its tokens' log-probabilities with confidence.WEB_TOP_LOGPROBS alternatives, for its page's
    confidence view; an API job keeps them only when its request asked (`options["logprobs"]`). When the broker cannot be reached the job is failed with the
    reason right away and the returned object says so (`status == failed`, `error`), so the caller can tell
    the user; a job is never left queued without a message behind it.
    """
    options = dict(options or {})
    if source == Job.Source.WEB:
        options.setdefault("logprobs", confidence.WEB_TOP_LOGPROBS)
    with transaction.atomic():
        job = Job.objects.create(
            owner=owner,
            task=task,
            prompt=prompt,
            context=context,
            options=options,
            checkpoint=checkpoint,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            seed=seed,
            repetition_penalty=repetition_penalty,
            prompt_tokens=prompt_tokens,
            source=source,
            conversation=conversation,
        )
        transaction.on_commit(lambda: job_enqueue(job=job))
    return job


def jobs_submit(*, owner: Any, source: str = Job.Source.WEB, inputs: list[dict[str, Any]],
                require_worker: bool = False) -> list[Job]:
    """Create one queued job per entry of `inputs` (job_create's keyword arguments) if the quotas allow all of
    them, else raise limits.QuotaExceeded; the check and the inserts happen under one admission lock."""
    # Refused at once when already over a limit (a count that is stale by a moment errs towards refusing), so
    # a burst's surplus does not queue for the lock; then checked again, and inserted, under the lock.
    limits.check_quotas(user=owner, n=len(inputs), require_worker=require_worker)
    with limits.admission():
        limits.check_quotas(user=owner, n=len(inputs), require_worker=require_worker)
        return [job_create(owner=owner, source=source, **fields) for fields in inputs]


def job_enqueue(*, job: Job) -> bool:
    """Publish the job's Celery message to the queue of a worker holding its checkpoint (else the default
    queue); on a broker error fail the job with the reason. True when queued."""
    from generation.tasks import send_run_job

    try:
        send_run_job(job.pk, queue=queues.queue_for_new_job(checkpoint_id=job.checkpoint_id))
    except Exception as exc:  # kombu OperationalError, redis ConnectionError, socket errors...
        logger.warning("Could not queue job %s: %s", job.pk, exc)
        reason = f"Could not queue the job: the job queue (Redis) is unreachable ({exc}). Please try again later."
        now = timezone.now()
        Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
            status=Job.Status.FAILED, error=reason, finished_at=now
        )
        job.status, job.error, job.finished_at = Job.Status.FAILED, reason, now
        streams.stream_end(job_id=job.pk, status=Job.Status.FAILED)
        return False
    return True


# --- user actions --------------------------------------------------------------------------------------------


def job_cancel(*, job: Job) -> bool:
    """Cancel a queued or running job. True when it changed.

    A queued job is never claimed after this (the claim is conditional on `queued`) and its stream ends here;
    a running one is told over Redis and stops before the engine's next decode step, keeping its partial
    output (the worker saves it and ends the stream).
    """
    now = timezone.now()
    cancelled = {"status": Job.Status.CANCELLED, "finished_at": now, "error": "cancelled by the user"}
    if Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(**cancelled):
        streams.stream_end(job_id=job.pk, status=Job.Status.CANCELLED)
    elif Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(**cancelled):
        streams.cancel_publish(job_id=job.pk)
    else:
        return False
    job.refresh_from_db()
    return True


def job_delete(*, job: Job) -> None:
    """Delete the job; if a worker is running it, the worker notices within a second and stops generating."""
    job.delete()


def job_rerun_initial(*, job: Job) -> dict[str, Any]:
    """Initial data for the new-job form that repeats `job` (its checkpoint only while it is still ready)."""
    initial: dict[str, Any] = {
        **job.inputs(),
        "language": job.options.get("language", prompts.DEFAULT_LANGUAGE),
        "length": job.options.get("length", prompts.DEFAULT_LENGTH),
        "checkpoint": job.checkpoint.pk if job.checkpoint.is_ready else None,
    }
    return initial


def job_replay(*, job: Job) -> Job:
    """A new queued job with the same task, input, parameters and checkpoint (used for API jobs, whose
    chat messages or raw prompt the new-job form cannot express)."""
    inputs = job.inputs()
    [new] = jobs_submit(owner=job.owner, source=inputs.pop("source"), inputs=[inputs])
    return new


def job_rate(*, job: Job, rating: int | None, comment: str = "") -> None:
    """Rate the answer (Job.Rating: up or down, with an optional comment), or clear the rating (None)."""
    if rating is None:
        job.rating, job.rating_comment, job.rated_at = None, "", None
    else:
        job.rating, job.rating_comment, job.rated_at = Job.Rating(rating), comment.strip(), timezone.now()
    job.save(update_fields=["rating", "rating_comment", "rated_at"])


class CannotContinue(Exception):
    """The job is not an answer that a Continue can extend; the message says why."""


def job_continue(*, job: Job) -> Job:
    """Continue an answer that stopped at the token limit: a new queued job whose text extends it.

    How: the model gets the same input as before (system prompt, earlier turns, the question), then its cut
    answer as an assistant message, then a user message asking it to go on from there (chat.CONTINUE_PROMPT).
    That works with any checkpoint's chat template as it is; rendering the template with the assistant's
    message left open would need a second way to render every template. So the new job is a chat job (only
    chat jobs carry a message list), whatever the task of the one it continues, with
    `options["continues"]` = that job's id. Its page shows the answer so far followed by the new text
    (Job.full_output), and a further Continue extends that whole answer. In a conversation it is the next
    turn (only the newest turn can be continued), and later turns see one answer (chat.turn_messages).
    A completion (raw text, no template) is continued the plain way: the new prompt is the old prompt plus
    its output. Earlier turns are left out, oldest first, when the longer input no longer fits the context
    window; the answer gets the old job's max_tokens, or the room that is left. Raises CannotContinue,
    limits.ContextTooLong (the answer itself no longer fits) or limits.QuotaExceeded.
    """
    if not job.stopped_at_length:
        raise CannotContinue("Only an answer that stopped at the token limit can be continued.")
    if job.conversation_id and job.conversation.turns.filter(pk__gt=job.pk).exists():
        raise CannotContinue("Only the newest turn of a conversation can be continued.")
    checkpoint = job.checkpoint if job.checkpoint.is_ready else Checkpoint.default(task=Job.Task.CHAT)
    if checkpoint is None:
        raise CannotContinue("No checkpoint is ready; ask an administrator to add one.")
    answer = job.full_output()
    if job.task == Job.Task.COMPLETION:
        prompt = job.prompt + job.output
        fit = limits.fit_context(checkpoint=checkpoint, task=job.task, prompt=prompt, max_tokens=None,
                                 default_max_tokens=job.max_tokens)
        inputs = {**job.inputs(), "prompt": prompt, "checkpoint": checkpoint, "max_tokens": fit.max_tokens,
                  "prompt_tokens": len(fit.prompt_ids),
                  "options": {**job.options, "continues": job.pk, "answer_so_far": answer}}
    else:
        if job.task == Job.Task.CHAT:
            # A continuation's messages end with the answer it continued and the request to go on: drop both.
            sent = job.chat_messages()[:-2] if job.options.get("continues") else job.chat_messages()
        else:
            sent = prompts.build_messages(task=job.task, prompt=job.prompt, context=job.context, options=job.options)
        system = "\n\n".join(m["content"] for m in sent if m["role"] == "system")
        groups = chat.preamble_groups([m for m in sent if m["role"] != "system"])
        question = groups.pop() if groups else []
        plan = chat.fit_turns(checkpoint=checkpoint, system_prompt=system, history=groups,
                              new=[*question, {"role": "assistant", "content": answer},
                                   {"role": "user", "content": chat.CONTINUE_PROMPT}],
                              max_tokens=None, default_max_tokens=job.max_tokens)
        inputs = {**job.inputs(), "task": Job.Task.CHAT, "checkpoint": checkpoint, "context": "",
                  "max_tokens": plan.max_tokens, "prompt_tokens": plan.prompt_tokens,
                  "options": {"messages": plan.messages, "continues": job.pk,
                              "left_out": plan.left_out + int(job.options.get("left_out") or 0),
                              **({"stop": job.options["stop"]} if job.options.get("stop") else {})}}
    source = inputs.pop("source")
    with limits.admission():
        limits.check_quotas(user=job.owner, n=1)
        new = job_create(owner=job.owner, source=source, conversation=job.conversation, **inputs)
    if job.conversation_id:
        Conversation.objects.filter(pk=job.conversation_id).update(updated_at=timezone.now())
    return new


# --- conversations -------------------------------------------------------------------------------------------


class ConversationBusy(Exception):
    """The conversation's newest turn has not finished: the next message waits for its answer."""


class NoCheckpoint(Exception):
    """No checkpoint is ready to serve the conversation."""


def conversation_checkpoint(*, conversation: Conversation) -> Checkpoint:
    """The conversation's own checkpoint while it is ready, else the chat task's default."""
    checkpoint = conversation.checkpoint
    if checkpoint is None or not checkpoint.is_ready:
        checkpoint = Checkpoint.default(task=Job.Task.CHAT)
    if checkpoint is None:
        raise NoCheckpoint("No checkpoint is ready; ask an administrator to add one.")
    return checkpoint


def conversation_plan(*, conversation: Conversation, message: str, max_tokens: int | None = None) -> chat.Plan:
    """The messages the next turn would send (the thread so far, trimmed to fit) and their token counts.
    Raises NoCheckpoint or limits.ContextTooLong (the new message alone does not fit)."""
    turns = list(conversation.turns.order_by("created_at", "id")) if conversation.pk else []
    history = chat.preamble_groups(conversation.preamble) + chat.turn_messages(turns)
    return chat.fit_turns(checkpoint=conversation_checkpoint(conversation=conversation),
                          system_prompt=conversation.system_prompt, history=history,
                          new=[{"role": "user", "content": message}], max_tokens=max_tokens,
                          default_max_tokens=prompts.TASK_DEFAULTS[Job.Task.CHAT].max_tokens)


def conversation_turn_submit(*, conversation: Conversation, message: str, max_tokens: int | None = None,
                             temperature: float | None = None) -> Job:
    """Queue the next turn: a chat job whose messages are the system prompt, the earlier exchanges (the
    oldest left out when the context window would be exceeded; `options["left_out"]` says how many) and
    `message`. Raises ConversationBusy (the newest turn is still queued or running), NoCheckpoint,
    limits.ContextTooLong or limits.QuotaExceeded."""
    defaults = prompts.TASK_DEFAULTS[Job.Task.CHAT]
    busy = conversation.turns.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
    if busy.exists():
        raise ConversationBusy("Wait for the answer to your last message, or stop it, before sending the next.")
    plan = conversation_plan(conversation=conversation, message=message, max_tokens=max_tokens)
    with limits.admission():
        if busy.exists():  # a second request that came meanwhile
            raise ConversationBusy("Wait for the answer to your last message, or stop it, before sending the next.")
        limits.check_quotas(user=conversation.owner, n=1)
        job = job_create(
            owner=conversation.owner, task=Job.Task.CHAT, prompt=message,
            checkpoint=conversation_checkpoint(conversation=conversation),
            options={"messages": plan.messages, "left_out": plan.left_out},
            temperature=defaults.temperature if temperature is None else temperature, top_p=defaults.top_p,
            top_k=defaults.top_k, max_tokens=plan.max_tokens, repetition_penalty=defaults.repetition_penalty,
            prompt_tokens=plan.prompt_tokens, conversation=conversation,
        )
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    return job


def conversation_start(*, owner: Any, message: str, system_prompt: str, title: str = "", preset: str = "",
                       checkpoint: Checkpoint | None = None, preamble: list[dict[str, str]] | None = None,
                       max_tokens: int | None = None, temperature: float | None = None) -> tuple[Conversation, Job]:
    """A new conversation and its first turn. Nothing is stored when the turn cannot be queued (the errors
    of conversation_turn_submit)."""
    conversation = Conversation(owner=owner, title=(title.strip() or _title_of(message))[:200],
                                system_prompt=system_prompt, preset=preset, checkpoint=checkpoint,
                                preamble=list(preamble or []))
    conversation_plan(conversation=conversation, message=message, max_tokens=max_tokens)  # fits, before saving
    conversation.save()
    try:
        job = conversation_turn_submit(conversation=conversation, message=message, max_tokens=max_tokens,
                                       temperature=temperature)
    except BaseException:
        conversation.delete()
        raise
    return conversation, job


def _title_of(message: str) -> str:
    words = " ".join(message.split())
    return words if len(words) <= 60 else words[:59].rstrip() + "…"


def conversation_update(*, conversation: Conversation, title: str, system_prompt: str) -> None:
    """Rename the conversation or change its system prompt (used from the next turn on)."""
    conversation.title = title.strip()[:200] or conversation.title
    conversation.system_prompt = system_prompt
    conversation.save(update_fields=["title", "system_prompt", "updated_at"])


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete the thread; its turns stay in the history as chat jobs (and are cancelled if unfinished)."""
    jobs_cancel_unfinished(job_ids=list(conversation.turns.values_list("pk", flat=True)))
    conversation.delete()


def conversation_rerun_initial(*, job: Job) -> dict[str, Any]:
    """How a chat job opens as a new conversation that repeats it: its system prompt, its earlier messages
    (carried over as the conversation's preamble) and its last user message, ready to send again."""
    system, earlier, message = chat.split_chat_job(job.chat_messages() or [{"role": "user", "content": job.prompt}])
    return {"system_prompt": system, "preamble": earlier, "message": message,
            "title": f"Rerun of job {job.pk}", "preset": "",
            "checkpoint": job.checkpoint.pk if job.checkpoint.is_ready else None,
            "max_tokens": job.max_tokens, "temperature": job.temperature}


def jobs_cancel_unfinished(*, job_ids: list[int]) -> None:
    """Cancel those of the jobs that are still queued or running (an API client went away)."""
    for job in Job.objects.filter(pk__in=job_ids, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]):
        job_cancel(job=job)


# --- API keys ------------------------------------------------------------------------------------------------


def api_key_create(*, owner: Any, name: str) -> tuple[ApiKey, str]:
    """A new key for `owner`; returns the row and the secret, which is not stored and cannot be shown again."""
    secret = ApiKey.PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        owner=owner, name=name.strip() or "key", key_hash=api_key_hash(secret), hint=secret[: len(ApiKey.PREFIX) + 4]
    )
    return key, secret


def api_key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_revoke(*, key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db()


def api_key_delete(*, key: ApiKey) -> bool:
    """Remove a revoked key from the list; an active key is kept (it must be revoked first). True if removed."""
    deleted, _ = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=False).delete()
    return bool(deleted)


def api_key_authenticate(*, secret: str) -> Any | None:
    """The owner of an active key with this secret (and mark it used), else None."""
    key = ApiKey.objects.select_related("owner").filter(key_hash=api_key_hash(secret), revoked_at__isnull=True).first()
    if key is None or not key.owner.is_active:
        return None
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    return key.owner

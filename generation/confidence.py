"""How sure the model was: token log-probabilities as a job stores them (Job.logprobs) and what is read from them.

Stored shape, one entry per generated token: [text, logprob, [[alternative, logprob], ...]] (compact_logprob).
A job's confidence is the mean of its tokens' log-probabilities (Job.mean_logprob, computed by mean_logprob
only). Shown as a probability it is exp(mean), the geometric mean of the tokens' probabilities (1 / perplexity):
one token the model barely believed pulls it down more than an arithmetic mean would.

Pure functions: no Django, so a migration and the runner use the same code.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

#: Alternatives per token every web job stores (the job form and conversation turns), for the confidence view.
WEB_TOP_LOGPROBS = 5

#: The history's "confidence below" filter, in percent of the mean token probability (exp(Job.mean_logprob)).
CONFIDENCE_BELOW_PERCENT = (90, 70, 50)


def compact_logprob(entry: dict) -> list:
    """generate_text's OpenAI-shaped entry as stored with the job: [text, logprob, [[alternative, logprob], ...]]."""
    return [entry["token"], entry["logprob"], [[alt["token"], alt["logprob"]] for alt in entry["top_logprobs"]]]


def mean_logprob(entries: Iterable[Sequence[Any]] | None) -> float | None:
    """The mean log-probability of the stored entries' tokens; None when there is none to average (no
    log-probabilities kept, or no token generated). Entries whose value is not a finite number are skipped."""
    values = []
    for entry in entries or ():
        if isinstance(entry, (list, tuple)) and len(entry) >= 2:
            value = entry[1]
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values.append(float(value))
    return math.fsum(values) / len(values) if values else None


def probability(logprob: float | None) -> float | None:
    """exp(logprob): a log-probability as a probability in 0..1 (None stays None)."""
    return None if logprob is None else math.exp(logprob)


def percent_logprob(percent: float) -> float:
    """The log-probability of `percent` % (the bound a filter compares Job.mean_logprob with)."""
    return math.log(percent / 100)

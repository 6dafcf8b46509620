"""How sure the model was: web jobs keep their tokens' log-probabilities, the runner stores their mean
(Job.mean_logprob) and migration 0007 fills it in for older rows; the history sorts and filters by it, and its
exports carry it; the job page offers the confidence view."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from generation import confidence, runner, services
from generation.models import Job
from tests.generation.fakes import FAKE_ALTERNATIVES, FAKE_LOGPROB, FakeEngine, FakeInfo, FakeResult

pytestmark = pytest.mark.django_db

#: Three tokens as the runner stores them; their mean log-probability is -0.5 (exp: 61%).
ENTRIES = [["Par", -0.1, [["Par", -0.1], ["Lon", -2.5]]], ["is", -0.2, [["is", -0.2]]],
           ["<b>.</b>", -1.2, [["<b>.</b>", -1.2], ["!", -1.4]]]]


def with_mean(make_job, mean: float | None, **fields) -> Job:
    """A finished job whose stored tokens average `mean` (None: no log-probabilities kept)."""
    entries = None if mean is None else [["a", mean, []], ["b", mean, []]]
    return make_job(status=Job.Status.SUCCEEDED, output="ab", logprobs=entries, mean_logprob=mean, **fields)


# --- the mean ---------------------------------------------------------------------------------------------------


def test_it_averages_the_tokens_log_probabilities():
    assert confidence.mean_logprob(ENTRIES) == pytest.approx(-0.5)
    assert confidence.probability(confidence.mean_logprob(ENTRIES)) == pytest.approx(math.exp(-0.5))


@pytest.mark.parametrize("entries", [None, [], [["x"]], [["x", None, []]], [["x", float("-inf"), []]],
                                     [["x", "bad", []]], [["x", True, []]]])
def test_it_has_no_mean_without_a_finite_value(entries):
    assert confidence.mean_logprob(entries) is None


def test_it_skips_entries_without_a_finite_value():
    assert confidence.mean_logprob([["a", -1.0, []], ["b", float("nan"), []], ["c", -3.0, []]]) == -2.0


def test_the_job_shows_the_mean_as_a_probability(make_job):
    assert with_mean(make_job, math.log(0.83)).confidence() == pytest.approx(0.83)
    assert with_mean(make_job, None).confidence() is None


# --- what jobs keep ---------------------------------------------------------------------------------------------


def test_web_jobs_keep_log_probabilities_with_five_alternatives(owner, checkpoint):
    job = services.job_create(owner=owner, task=Job.Task.QA, prompt="Why?", checkpoint=checkpoint,
                              options={"language": "x"})
    assert job.options == {"language": "x", "logprobs": confidence.WEB_TOP_LOGPROBS}
    assert Job.objects.get(pk=job.pk).sampling_params().logprobs == 5


def test_api_jobs_keep_them_only_when_asked(owner, checkpoint):
    plain = services.job_create(owner=owner, task=Job.Task.CHAT, prompt="hi", checkpoint=checkpoint,
                                source=Job.Source.API, options={"messages": [{"role": "user", "content": "hi"}]})
    asked = services.job_create(owner=owner, task=Job.Task.CHAT, prompt="hi", checkpoint=checkpoint,
                                source=Job.Source.API, options={"logprobs": 2})
    assert "logprobs" not in plain.options and plain.sampling_params().logprobs is None
    assert asked.sampling_params().logprobs == 2


def test_a_conversation_turn_keeps_them_too(owner, checkpoint):
    _, job = services.conversation_start(owner=owner, message="Hello", system_prompt="Be brief.")
    assert job.source == Job.Source.WEB and job.options["logprobs"] == confidence.WEB_TOP_LOGPROBS


@pytest.fixture
def engine(monkeypatch) -> FakeEngine:
    """The engine's stand-in serves the jobs this test runs (runner.job_run)."""
    info, engine = FakeInfo(), FakeEngine(FakeResult(text="Paris.", token_ids=[1, 2, 3, 4, 5, 6]))
    monkeypatch.setattr("modelzoo.pool.checkpoint_info", lambda checkpoint: info)
    monkeypatch.setattr("modelzoo.pool.serving", lambda checkpoint: contextlib.nullcontext(engine))
    return engine


def test_the_runner_stores_the_tokens_and_their_mean(make_job, engine, empty_redis):
    job = make_job(options={"logprobs": 2})
    runner.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.logprobs[0] == ["P", FAKE_LOGPROB, [["P", FAKE_LOGPROB], [chr(FAKE_ALTERNATIVES[0][0]), -1.5]]]
    assert len(job.logprobs) == len("Paris.")
    assert job.mean_logprob == pytest.approx(FAKE_LOGPROB) == confidence.mean_logprob(job.logprobs)


def test_the_runner_stores_no_mean_when_nothing_was_asked(make_job, engine, empty_redis):
    job = make_job(source=Job.Source.API)
    runner.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.output == "Paris."
    assert job.logprobs is None and job.mean_logprob is None


# --- migration 0007 ---------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_in_the_mean_of_older_jobs(owner, checkpoint):
    before, after = [("generation", "0006_chat_label")], [("generation", "0007_job_mean_logprob")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old = MigrationExecutor(connection).loader.project_state(before).apps.get_model("generation", "Job")
        common = {"owner_id": owner.pk, "checkpoint_id": checkpoint.pk, "task": "qa", "prompt": "p",
                  "status": "succeeded"}
        kept = old.objects.create(**common, logprobs=ENTRIES)
        without = old.objects.create(**common, logprobs=None)
        empty = old.objects.create(**common, logprobs=[])
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(after)
    assert Job.objects.get(pk=kept.pk).mean_logprob == pytest.approx(-0.5)
    assert Job.objects.get(pk=without.pk).mean_logprob is None
    assert Job.objects.get(pk=empty.pk).mean_logprob is None


# --- the history ------------------------------------------------------------------------------------------------


def ids(response) -> list[int]:
    return [job.pk for job in response.context["page"].object_list]


@pytest.fixture
def sureness(make_job) -> dict[str, Job]:
    """Jobs of known confidence (exp of their mean): 95%, 75%, 40%, and one without log-probabilities."""
    return {"sure": with_mean(make_job, math.log(0.95), prompt="sure"),
            "fair": with_mean(make_job, math.log(0.75), prompt="fair"),
            "unsure": with_mean(make_job, math.log(0.40), prompt="unsure"),
            "unknown": with_mean(make_job, None, prompt="unknown")}


def test_the_history_lists_the_least_sure_first_and_those_without_a_mean_last(owner_client, sureness):
    names = {job.pk: name for name, job in sureness.items()}
    assert [names[pk] for pk in ids(owner_client.get("/jobs/?sort=least-sure"))] == [
        "unsure", "fair", "sure", "unknown"]
    assert [names[pk] for pk in ids(owner_client.get("/jobs/?sort=most-sure"))] == [
        "sure", "fair", "unsure", "unknown"]
    assert [names[pk] for pk in ids(owner_client.get("/jobs/?sort=bogus"))] == [
        "unknown", "unsure", "fair", "sure"]  # newest first: unknown values are ignored


@pytest.mark.parametrize("value, wanted", [("below-90", ["unsure", "fair"]), ("below-70", ["unsure"]),
                                           ("below-50", ["unsure"]), ("unmeasured", ["unknown"]),
                                           ("below-12", ["unknown", "unsure", "fair", "sure"])])
def test_the_history_filters_by_confidence(owner_client, sureness, value, wanted):
    assert ids(owner_client.get(f"/jobs/?confidence={value}")) == [sureness[name].pk for name in wanted]


def test_the_history_shows_each_jobs_confidence(owner_client, sureness):
    content = owner_client.get("/jobs/").content.decode()
    assert '<td class="confidence-cell" data-label="Confidence"><span class="sure">75%</span></td>' in content
    assert content.count('<span class="sure">') == 3


def test_the_sort_and_the_filter_stay_across_pages_and_after_a_delete(owner_client, sureness, settings):
    settings.JOBS_PER_PAGE = 1
    page1 = owner_client.get("/jobs/?confidence=below-90&sort=least-sure")
    assert ids(page1) == [sureness["unsure"].pk]
    content = page1.content.decode()
    assert 'href="?confidence=below-90&amp;sort=least-sure&amp;page=2" rel="next">Next</a>' in content
    assert ids(owner_client.get("/jobs/?confidence=below-90&sort=least-sure&page=2")) == [sureness["fair"].pk]
    assert '<option value="least-sure" selected>' in content and '<option value="below-90" selected>' in content
    assert 'name="next" value="/jobs/?confidence=below-90&amp;sort=least-sure"' in content
    response = owner_client.post(f"/jobs/{sureness['unsure'].pk}/delete/",
                                 {"next": "/jobs/?confidence=below-90&sort=least-sure"})
    assert response.status_code == 302 and response["Location"] == "/jobs/?confidence=below-90&sort=least-sure"


def test_the_rating_filter_counts_as_a_filter_for_clear_and_the_count(owner_client, make_job):
    make_job(rating=Job.Rating.UP), make_job()
    rated = owner_client.get("/jobs/?rating=up").content.decode()
    assert '<a href="/jobs/">Clear</a>' in rated
    assert "1 job matches" in rated and "Download these" in rated
    assert "No jobs match these filters" in owner_client.get("/jobs/?rating=down").content.decode()
    plain = owner_client.get("/jobs/").content.decode()
    assert '<a href="/jobs/">Clear</a>' not in plain and "2 jobs<" in plain
    assert '<a href="/jobs/">Clear</a>' in owner_client.get("/jobs/?sort=least-sure").content.decode()


# --- the exports ------------------------------------------------------------------------------------------------


def test_the_json_export_holds_the_tokens_and_their_mean(owner_client, make_job):
    job = make_job(status=Job.Status.SUCCEEDED, output="Paris.", logprobs=ENTRIES,
                   mean_logprob=confidence.mean_logprob(ENTRIES))
    [row] = json.loads(owner_client.get("/jobs/export.json").content)["jobs"]
    assert row == json.loads(json.dumps(Job.objects.get(pk=job.pk).to_dict()))
    assert row["logprobs"] == ENTRIES
    assert row["mean_logprob"] == pytest.approx(-0.5) and row["confidence"] == pytest.approx(math.exp(-0.5))


def test_the_csv_and_markdown_exports_give_the_mean(owner_client, sureness):
    rows = {row["prompt"]: row for row in csv.DictReader(io.StringIO(
        owner_client.get("/jobs/export.csv").content.decode()))}
    assert float(rows["fair"]["mean_logprob"]) == pytest.approx(math.log(0.75))
    assert float(rows["fair"]["confidence"]) == pytest.approx(0.75)
    assert rows["unknown"]["mean_logprob"] == rows["unknown"]["confidence"] == ""
    markdown = owner_client.get("/jobs/export.md").content.decode()
    assert "- Confidence: 75% mean token probability" in markdown
    assert markdown.count("- Confidence:") == 3


def test_the_export_follows_the_confidence_filter_and_the_order(owner_client, sureness):
    data = json.loads(owner_client.get("/jobs/export.json?confidence=below-90&sort=least-sure").content)
    assert [row["id"] for row in data["jobs"]] == [sureness["unsure"].pk, sureness["fair"].pk]
    assert data["filters"] == {"confidence": "below-90", "sort": "least-sure"}


# --- the job page -----------------------------------------------------------------------------------------------


def test_the_job_page_offers_the_confidence_view_and_shows_the_mean(owner_client, make_job):
    job = make_job(status=Job.Status.SUCCEEDED, output="Paris.", logprobs=ENTRIES, mean_logprob=-0.5)
    content = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert ('<button type="button" class="small secondary" id="confidence-toggle" data-part="confidence-toggle" '
            'aria-pressed="false" aria-controls="job-confidence">Confidence</button>') in content
    assert '<span data-stat="confidence" id="stat-confidence">61%</span>' in content
    assert '<tr data-part="confidence-row">' in content
    assert "/static/generation/job_confidence.js" in content and "/static/generation/confidence.css" in content
    assert "<b>.</b>" not in content  # the tokens come as JSON and go in as text (job_confidence.js)
    assert owner_client.get(f"/jobs/{job.pk}.json").json()["logprobs"][2][0] == "<b>.</b>"


def test_a_job_without_log_probabilities_hides_the_view(owner_client, make_job):
    job = make_job(status=Job.Status.SUCCEEDED, output="Paris.", source=Job.Source.API)
    content = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'aria-controls="job-confidence" hidden>Confidence</button>' in content
    assert '<tr data-part="confidence-row" hidden>' in content

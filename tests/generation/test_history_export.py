"""The history's export (JSON, CSV, Markdown of exactly the filtered jobs, every page), what the list shows of
each job (model, output preview, token counts), and a delete from the list returning to the same filters."""
from __future__ import annotations

import csv
import io
import json
import re

import pytest

from generation.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def jobs(make_job, other):
    """Five jobs of the owner (two code jobs that succeeded, one failed, two QA) and one of somebody else."""
    return {
        "code_ok": make_job(task=Job.Task.CODE, status=Job.Status.SUCCEEDED, prompt="Write fizzbuzz",
                            output="```python\nprint(1)\n```", prompt_tokens=82, completion_tokens=31),
        "code_ok_2": make_job(task=Job.Task.CODE, status=Job.Status.SUCCEEDED, prompt="Sort a list, fast",
                              output="=SUM(A1) looks like a formula", prompt_tokens=12, completion_tokens=7),
        "code_failed": make_job(task=Job.Task.CODE, status=Job.Status.FAILED, prompt="Write a parser",
                                error="time limit exceeded"),
        "qa": make_job(task=Job.Task.QA, prompt="Why is the sky blue?", status=Job.Status.SUCCEEDED,
                       output="Rayleigh scattering."),
        "qa_queued": make_job(task=Job.Task.QA, prompt="What is a list?"),
        "theirs": make_job(owner=other, task=Job.Task.CODE, status=Job.Status.SUCCEEDED, prompt="Write fizzbuzz too"),
    }


def export(client, fmt: str, query: str = ""):
    response = client.get(f"/jobs/export.{fmt}" + (f"?{query}" if query else ""))
    assert response.status_code == 200, response.content[:300]
    return response


def json_ids(response) -> list[int]:
    data = json.loads(response.content)
    assert data["count"] == len(data["jobs"])
    return [job["id"] for job in data["jobs"]]


def csv_rows(response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def markdown_ids(response) -> list[int]:
    return [int(n) for n in re.findall(r"^## Job (\d+) ", response.content.decode(), flags=re.M)]


@pytest.mark.parametrize("query, wanted", [
    ("", ["qa_queued", "qa", "code_failed", "code_ok_2", "code_ok"]),
    ("task=code", ["code_failed", "code_ok_2", "code_ok"]),
    ("task=code&status=succeeded", ["code_ok_2", "code_ok"]),
    ("q=fizzbuzz", ["code_ok"]),
    ("task=qa&status=failed", []),
    ("task=bogus&status=succeeded", ["qa", "code_ok_2", "code_ok"]),  # unknown values are ignored, as in the list
])
def test_each_export_holds_exactly_the_filtered_jobs(owner_client, jobs, query, wanted):
    expected = [jobs[name].pk for name in wanted]
    assert json_ids(export(owner_client, "json", query)) == expected
    assert [int(row["id"]) for row in csv_rows(export(owner_client, "csv", query))] == expected
    assert markdown_ids(export(owner_client, "md", query)) == expected
    listed = owner_client.get("/jobs/" + (f"?{query}" if query else "")).context["page"].paginator.object_list
    assert [job.pk for job in listed] == expected


def test_the_export_takes_every_page_not_only_the_first(owner_client, make_job, settings):
    settings.JOBS_PER_PAGE = 2
    made = [make_job(prompt=f"job {n}") for n in range(5)]
    assert json_ids(export(owner_client, "json", "page=2")) == [job.pk for job in reversed(made)]


def test_the_json_export_is_each_jobs_own_json(owner_client, jobs):
    data = json.loads(export(owner_client, "json", "q=fizzbuzz").content)
    job = jobs["code_ok"]
    job.refresh_from_db()
    assert data["jobs"] == [job.to_dict()]
    assert data["filters"] == {"q": "fizzbuzz"}


def test_the_csv_export_has_the_fields_and_defuses_formulas(owner_client, jobs):
    response = export(owner_client, "csv", "task=code&status=succeeded")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="llmsite-history-\d{8}-\d{6}\.csv"', response["Content-Disposition"])
    rows = {int(row["id"]): row for row in csv_rows(response)}
    fizz = rows[jobs["code_ok"].pk]
    assert (fizz["task"], fizz["status"], fizz["prompt"], fizz["output"]) == (
        "code", "succeeded", "Write fizzbuzz", "```python\nprint(1)\n```")
    assert (fizz["prompt_tokens"], fizz["completion_tokens"]) == ("82", "31")
    assert fizz["checkpoint"] == jobs["code_ok"].checkpoint.name
    assert rows[jobs["code_ok_2"].pk]["output"] == "'=SUM(A1) looks like a formula"  # not run by a spreadsheet


def test_the_markdown_export_keeps_the_outputs_own_fences_literal(owner_client, jobs):
    response = export(owner_client, "md", "q=fizzbuzz")
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    text = response.content.decode()
    assert "# llmsite history" in text and "filters: q: fizzbuzz" in text
    assert "````text\n```python\nprint(1)\n```\n````" in text
    assert "- Tokens: 82 prompt · 31 answer" in text


def test_the_export_needs_a_known_format_and_shows_nobody_elses_jobs(owner_client, other_client, jobs):
    assert owner_client.get("/jobs/export.xml").status_code == 404
    assert json_ids(export(other_client, "json")) == [jobs["theirs"].pk]


def test_the_history_links_the_exports_with_its_filters(owner_client, jobs):
    content = owner_client.get("/jobs/?task=code&q=fizz").content.decode()
    for fmt in ("json", "csv", "md"):
        assert f'href="/jobs/export.{fmt}?task=code&amp;q=fizz"' in content


def test_the_history_shows_the_model_an_output_preview_and_readable_token_counts(owner_client, jobs):
    content = owner_client.get("/jobs/").content.decode()
    row = content[content.index(f'data-job-id="{jobs["code_ok"].pk}"'):]
    row = row[:row.index("</tr>")]
    assert jobs["code_ok"].checkpoint.name in row
    assert "82 prompt · 31 answer" in re.sub(r"<[^>]+>", "", row)
    assert "→ python print(1)" in row
    failed = content[content.index(f'data-job-id="{jobs["code_failed"].pk}"'):]
    assert 'class="preview failed">→ time limit exceeded' in failed[:failed.index("</tr>")]


def test_a_delete_from_a_filtered_page_returns_to_it(owner_client, jobs):
    job = jobs["code_ok"]
    response = owner_client.post(f"/jobs/{job.pk}/delete/", {"next": "/jobs/?task=code&status=succeeded&page=1"})
    assert (response.status_code, response["Location"]) == (302, "/jobs/?task=code&status=succeeded&page=1")
    assert not Job.objects.filter(pk=job.pk).exists()
    page = owner_client.get(response["Location"])
    assert [j.pk for j in page.context["page"].object_list] == [jobs["code_ok_2"].pk]
    assert f"Job {job.pk} deleted." in page.content.decode()


def test_the_list_passes_its_filters_to_delete(owner_client, jobs):
    content = owner_client.get("/jobs/?task=code&q=fizz").content.decode()
    assert '<input type="hidden" name="next" value="/jobs/?task=code&amp;q=fizz">' in content


@pytest.mark.parametrize("next_url", ["https://evil.example/jobs/", "//evil.example/jobs/", "/accounts/", "/jobs/1/"])
def test_a_delete_returns_to_the_history_only(owner_client, jobs, next_url):
    response = owner_client.post(f"/jobs/{jobs['qa'].pk}/delete/", {"next": next_url})
    assert (response.status_code, response["Location"]) == (302, "/jobs/")

"""Thin views: validate with a form, call one service or selector, respond. Auth lives in the decorators."""
from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from generation import health, selectors, services
from generation.forms import JobForm
from generation.models import Job
from generation.rendering import render_output


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("generation:job_new")


@login_required
@require_http_methods(["GET", "POST"])
def job_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = JobForm(request.POST)
        if form.is_valid():
            job = services.job_create(owner=request.user, **form.job_kwargs())
            if job.status == Job.Status.FAILED:
                messages.error(request, job.error)
            return redirect(job)
    else:
        initial = {}
        if rerun_id := request.GET.get("rerun"):
            if not rerun_id.isdigit():
                raise Http404("No such job")
            source = selectors.job_get_for_user(user=request.user, job_id=int(rerun_id))
            initial = services.job_rerun_initial(job=source)
        form = JobForm(initial=initial)
    return render(request, "generation/job_form.html", {"form": form})


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    task = request.GET.get("task", "")
    status = request.GET.get("status", "")
    q = request.GET.get("q", "")
    jobs = selectors.job_list_for_user(
        user=request.user,
        task=task if task in Job.Task.values else "",
        status=status if status in Job.Status.values else "",
        q=q,
    )
    page = Paginator(jobs, settings.JOBS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "generation/job_list.html",
        {
            "page": page,
            "task": task,
            "status": status,
            "q": q,
            "query": query.urlencode(),
            "tasks": Job.Task.choices,
            "statuses": Job.Status.choices,
        },
    )


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    return render(request, "generation/job_detail.html", {"job": job})


@never_cache
@login_required
@require_GET
def job_json(request: HttpRequest, job_id: int) -> JsonResponse:
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    data = job.to_dict()
    data["output_html"] = render_output(job.output, task=job.task, language=job.language())
    return JsonResponse(data)


@login_required
@require_http_methods(["GET", "POST"])
def job_delete(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    if request.method == "POST":
        services.job_delete(job=job)
        messages.success(request, f"Job {job_id} deleted.")
        return redirect("generation:job_list")
    return render(request, "generation/job_confirm_delete.html", {"job": job})


@login_required
@require_POST
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_user(user=request.user, job_id=job_id)
    if services.job_cancel(job=job):
        messages.success(request, f"Job {job_id} cancelled.")
    return redirect(job)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    ok, report = health.health()
    return JsonResponse(report, status=200 if ok else 503)

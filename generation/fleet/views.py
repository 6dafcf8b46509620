"""The admin's Workers page: the live workers and the queue depths (staff only, inside the admin's frame)."""
from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from generation.fleet.overview import workers_overview


def workers_page(request: HttpRequest) -> HttpResponse:
    context: dict = {**admin.site.each_context(request), "title": "Workers and queues"}
    try:
        context.update(workers_overview())
    except Exception as error:  # Redis down: say so instead of failing the page
        context["workers_error"] = str(error) or type(error).__name__
    return TemplateResponse(request, "admin/fleet/workers.html", context)

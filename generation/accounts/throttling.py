"""Sign-in throttling with django-axes (configured in settings, "Auth"): the backend that refuses a locked-out
username + address pair, and the lockout answer, which is the sign-in page saying when the lock lifts."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_parameters, get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone


class LoginThrottleBackend(AxesStandaloneBackend):
    """Axes' check before the password backends. Without a request (Django's test Client.login, a script) there
    is no client address to count failures for, so nothing is throttled instead of raising as axes does."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None,
                     **kwargs: Any) -> None:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def lockout_lifts_at(request: HttpRequest, credentials: dict[str, Any] | None = None) -> datetime:
    """When the lock on this request's username + address ends: the last counted failure plus the cool-off."""
    AxesProxyHandler.update_request(request)
    username = get_client_username(request, credentials)
    last = None
    for filters in get_client_parameters(username, request.axes_ip_address, request.axes_user_agent, request,
                                         credentials):
        latest = AccessAttempt.objects.filter(**filters).aggregate(latest=Max("attempt_time"))["latest"]
        last = latest if last is None or (latest is not None and latest > last) else last
    return (last or timezone.now()) + get_cool_off(request)


def lockout_message(lifts_at: datetime, *, now: datetime | None = None) -> str:
    seconds = max(1, math.ceil((lifts_at - (now or timezone.now())).total_seconds()))
    count, unit = (seconds, "second") if seconds < 60 else (math.ceil(seconds / 60), "minute")
    wait = f"{count} {unit}{'' if count == 1 else 's'}"
    local = timezone.localtime(lifts_at)
    return (f"Too many failed sign-ins for this account from your address. You can sign in again at "
            f"{local:%H:%M:%S} {local.tzname()} (in {wait}).")


def lockout_response(request: HttpRequest, original_response: Any = None, credentials: Any = None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the sign-in page again, with the lockout message, HTTP 429 and Retry-After.

    Axes calls this as (request, response, credentials) from sync middleware but (request, credentials) from
    async middleware; the username is read from the POST either way."""
    if not isinstance(credentials, dict):
        credentials = original_response if isinstance(original_response, dict) else None
    lifts_at, now = lockout_lifts_at(request, credentials), timezone.now()
    form = AuthenticationForm(request, initial={"username": get_client_username(request, credentials) or ""})
    context = {"form": form, "next": request.POST.get("next", request.GET.get("next", "")),
               "lockout": lockout_message(lifts_at, now=now)}
    response = render(request, "registration/login.html", context, status=settings.AXES_HTTP_RESPONSE_CODE)
    response["Retry-After"] = str(max(1, math.ceil((lifts_at - now).total_seconds())))
    return response

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from generation import selectors, services
from generation.models import ApiKey


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Create an account, sign it in and go straight to the new-job form."""
    if request.user.is_authenticated:
        return redirect("generation:job_new")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("generation:job_new")
    return render(request, "registration/signup.html", {"form": form})


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. the program that uses it.")


@login_required
@require_http_methods(["GET", "POST"])
def account(request: HttpRequest) -> HttpResponse:
    """The account page: the user's API keys; POST creates one and shows its secret this once."""
    form = ApiKeyForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        _, secret = services.api_key_create(owner=request.user, name=form.cleaned_data["name"])
        form = ApiKeyForm()
    keys = selectors.api_keys_for_user(user=request.user)
    base_url = request.build_absolute_uri("/v1")
    return render(request, "registration/account.html",
                  {"form": form, "keys": keys, "secret": secret, "base_url": base_url})


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=key_id, owner=request.user)
    services.api_key_revoke(key=key)
    messages.success(request, f"Key {key.name} revoked.")
    return redirect("account")

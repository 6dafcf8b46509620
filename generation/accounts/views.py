from __future__ import annotations

import json
import shlex

from django import forms
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_http_methods, require_POST

from generation import selectors, services
from generation.models import ApiKey

#: The model id the snippets name when no checkpoint is ready (the client then gets model_not_found).
SNIPPET_PLACEHOLDER_MODEL = "MODEL-ID"
SNIPPET_PROMPT = "Write a haiku about queues."


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


def api_snippets(*, base_url: str, model: str) -> dict[str, str]:
    """Ready-to-paste requests to the API with curl and with the openai client; the key comes from the
    LLMSITE_API_KEY environment variable, so a snippet can be shared without it."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": SNIPPET_PROMPT}]})
    curl = (f"curl {shlex.quote(base_url + '/chat/completions')} \\\n"
            '  -H "Authorization: Bearer $LLMSITE_API_KEY" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f"  -d {shlex.quote(body)}")
    python = ("import os\n\nfrom openai import OpenAI\n\n"
              f"client = OpenAI(base_url={json.dumps(base_url)}, api_key=os.environ[\"LLMSITE_API_KEY\"])\n"
              "reply = client.chat.completions.create(\n"
              f"    model={json.dumps(model)},\n"
              f"    messages=[{{\"role\": \"user\", \"content\": {json.dumps(SNIPPET_PROMPT)}}}],\n"
              ")\n"
              "print(reply.choices[0].message.content)")
    return {"curl": curl, "python": python}


@login_required
@require_http_methods(["GET", "POST"])
def account(request: HttpRequest) -> HttpResponse:
    """The account page: the user's API keys and how to call the API with one; POST creates a key and shows
    its secret this once."""
    form = ApiKeyForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        _, secret = services.api_key_create(owner=request.user, name=form.cleaned_data["name"])
        form = ApiKeyForm()
    keys = selectors.api_keys_for_user(user=request.user)
    base_url = request.build_absolute_uri("/v1")
    models = selectors.api_model_ids()
    snippets = api_snippets(base_url=base_url, model=models[0] if models else SNIPPET_PLACEHOLDER_MODEL)
    return render(request, "registration/account.html", {
        "form": form, "keys": keys, "secret": secret, "base_url": base_url, "models": models, "snippets": snippets,
    })


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=key_id, owner=request.user)
    services.api_key_revoke(key=key)
    messages.success(request, f"Key {key.name} revoked: requests with it are refused from now on.")
    return redirect("account")


@login_required
@require_POST
def api_key_delete(request: HttpRequest, key_id: int) -> HttpResponse:
    """Remove a revoked key from the list (an active key must be revoked first)."""
    key = get_object_or_404(ApiKey, pk=key_id, owner=request.user)
    if services.api_key_delete(key=key):
        messages.success(request, f"Key {key.name} removed.")
    else:
        messages.error(request, f"Key {key.name} is still active: revoke it before removing it.")
    return redirect("account")


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's password change (old password, new one twice, the validators), back to the account page.
    Our own template name: the admin app ships a registration/password_change_form.html that would win."""

    template_name = "registration/password_change.html"
    success_url = reverse_lazy("account")

    def form_valid(self, form):
        response = super().form_valid(form)  # keeps this session signed in (update_session_auth_hash)
        messages.success(self.request, "Your password was changed.")
        return response

"""OpenAI-shaped errors ({"error": {"message", "type", "param", "code"}}) and the decorator of every /v1 view:
Bearer API key auth (401), allowed methods (405), ApiError turned into its JSON."""
from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from generation import services


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JsonResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JsonResponse(body, status=self.status)


def api_view(methods: tuple[str, ...]) -> Callable:
    """Bearer API key auth (401), allowed methods (405) and ApiError -> OpenAI error JSON, for async views."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise ApiError(405, f"Method {request.method} not allowed", code="method_not_allowed")
                scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not secret.strip():
                    raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'. Create a key on "
                                        "your account page.", code="invalid_api_key")
                user = await sync_to_async(services.api_key_authenticate)(secret=secret.strip())
                if user is None:
                    raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
                request.api_user = user
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()

        return csrf_exempt(wrapper)

    return decorate

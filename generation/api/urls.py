from django.urls import path, re_path

from generation.api import views as api
from generation.api.errors import unknown_url

app_name = "api"

urlpatterns = [
    path("models", api.models, name="models"),
    path("completions", api.completions, name="completions"),
    path("chat/completions", api.chat_completions, name="chat_completions"),
    re_path(r"^.*$", unknown_url),  # any other /v1/ path: OpenAI's JSON 404, not the site's HTML page
]

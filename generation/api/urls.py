from django.urls import path

from generation.api import views as api

app_name = "api"

urlpatterns = [
    path("models", api.models, name="models"),
    path("completions", api.completions, name="completions"),
    path("chat/completions", api.chat_completions, name="chat_completions"),
]

from django.contrib import admin
from django.urls import include, path

from generation import views as generation_views

urlpatterns = [
    path("", generation_views.home, name="home"),
    path("healthz", generation_views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("generation.accounts.urls")),
    path("v1/", include("generation.api_urls")),
    path("", include("generation.urls")),
]

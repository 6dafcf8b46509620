from django.contrib import admin
from django.urls import include, path

from generation import views as generation_views
from generation.fleet.views import workers_page
from generation.metrics import metrics_view

urlpatterns = [
    path("", generation_views.home, name="home"),
    path("healthz", generation_views.healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/workers/", admin.site.admin_view(workers_page), name="fleet_workers"),
    path("admin/", admin.site.urls),
    path("accounts/", include("generation.accounts.urls")),
    path("v1/", include("generation.api.urls")),
    path("", include("generation.urls")),
]

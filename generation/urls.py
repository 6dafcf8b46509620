from django.urls import path

from generation import compare, views

app_name = "generation"

urlpatterns = [
    path("jobs/new/", views.job_new, name="job_new"),
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/export.<str:fmt>", views.job_export, name="job_export"),
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>.json", views.job_json, name="job_json"),
    path("jobs/<int:job_id>/stream", views.job_stream, name="job_stream"),
    path("jobs/<int:job_id>/delete/", views.job_delete, name="job_delete"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("jobs/<int:job_id>/replay/", views.job_replay, name="job_replay"),
    path("jobs/<int:job_id>/continue/", views.job_continue, name="job_continue"),
    path("jobs/<int:job_id>/rate/", views.job_rate, name="job_rate"),
    path("compare/new/", compare.compare_new, name="compare_new"),
    path("compare/", compare.compare_detail, name="compare_detail"),
    path("conversations/", views.conversation_list, name="conversation_list"),
    path("conversations/new/", views.conversation_new, name="conversation_new"),
    path("conversations/<int:conversation_id>/", views.conversation_detail, name="conversation_detail"),
    path("conversations/<int:conversation_id>/messages/", views.conversation_message, name="conversation_message"),
    path("conversations/<int:conversation_id>/edit/", views.conversation_edit, name="conversation_edit"),
    path("conversations/<int:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
]

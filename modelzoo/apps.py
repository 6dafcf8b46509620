from django.apps import AppConfig


class ModelzooConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "modelzoo"
    verbose_name = "Model zoo"

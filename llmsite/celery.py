"""The Celery app. Its configuration is the `CELERY_*` names of llmsite.settings.

Workers: `celery -A llmsite worker --pool threads --concurrency N` (threads share one resident Engine
per checkpoint per process; see modelzoo.pool).
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmsite.settings")

app = Celery("llmsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

"""WSGI entry point (gunicorn llmsite.wsgi)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmsite.settings")
application = get_wsgi_application()

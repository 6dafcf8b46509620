"""llmsite settings: 12-factor, every knob read from the environment, defaults that run on one machine.

The small `env*` helpers reject malformed values with ImproperlyConfigured instead of guessing.
"""
from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def envstr(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use one of 1/0, true/false, yes/no, on/off)")


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} must be at least {minimum}")
    return number


def envfloat(name: str, default: float, *, minimum: float | None = None) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ImproperlyConfigured(f"{name}={value!r} is not a finite number")
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} must be at least {minimum}")
    return number


def envlist(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# --- Paths -------------------------------------------------------------------------------------------------
VAR_DIR = Path(envstr("LLMSITE_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

# --- Core --------------------------------------------------------------------------------------------------
# The "django-insecure-" prefix of the default makes `manage.py check --deploy` flag a server started without one.
SECRET_KEY = envstr("SECRET_KEY", "django-insecure-dev-only-secret-key-change-me-in-production")
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    # generation first: its commands (generate) win over a same-named one of modelzoo.
    "generation",
    "modelzoo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a sign-in refused for too many failures into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "llmsite.urls"
WSGI_APPLICATION = "llmsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------------------------
# DATABASE_URL (e.g. postgres://user:pass@host/db) in production; a SQLite file under var/ by default.
DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 0, minimum=0),
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets the web server read while a worker writes; IMMEDIATE takes the write lock up front so
    # concurrent writers wait (timeout) instead of failing with "database is locked" mid-transaction.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
            "transaction_mode": "IMMEDIATE",
            "timeout": envint("SQLITE_TIMEOUT_S", 20, minimum=1),
        }
    )
    # A file (not :memory:) so that worker processes started by the tests can share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
elif DATABASES["default"]["ENGINE"].endswith("postgresql") and envbool("DATABASE_POOL", True):
    # A bounded pool per process (psycopg_pool): a burst of requests waits up to DATABASE_POOL_TIMEOUT_S for
    # one of DATABASE_POOL_MAX connections instead of exhausting the server's max_connections. Django
    # returns a connection to the pool when it closes it (CONN_MAX_AGE must then be 0).
    # (Django's pool checks each connection as it hands it out, so one the server dropped is replaced.)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": envint("DATABASE_POOL_MAX", 10, minimum=1),
        "timeout": envint("DATABASE_POOL_TIMEOUT_S", 20, minimum=1),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth --------------------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/jobs/new/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
# Sign-in throttling (django-axes): LOGIN_FAILURE_LIMIT wrong passwords for one username from one client address
# lock that pair out for LOGIN_LOCKOUT_S; other users at the same address (an office behind one NAT) and the same
# user elsewhere still sign in. The lockout answer is the sign-in page with the time it lifts, HTTP 429.
# The address is REMOTE_ADDR: behind a proxy, let the server set it from X-Forwarded-For (uvicorn
# --forwarded-allow-ips, gunicorn forwarded_allow_ips). API keys and force_login never pass through here.
AUTHENTICATION_BACKENDS = [
    "generation.accounts.throttling.LoginThrottleBackend",  # refuses a locked-out pair before the password check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=envint("LOGIN_LOCKOUT_S", 15 * 60, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_CALLABLE = "generation.accounts.throttling.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429
AXES_RESET_ON_SUCCESS = True
# Tries during a lockout are refused without counting, so the lock lifts at the time the page said.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Throttling needs only the failed attempts; no row per successful sign-in.
AXES_DISABLE_ACCESS_LOG = True

# --- Security headers and HTTPS ---------------------------------------------------------------------------
# Content-Security-Policy (django-csp) on every response: scripts and styles from our own static files only, so
# the templates hold no inline <script>, on...= handler or style= attribute. The admin passes it too: Django
# 5.2's admin loads every script from a file (its data rides on data- attributes); its one inline <style>
# (a change list with no actions at all) only sets a column width, and none of our change lists lacks actions.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],  # the admin's stylesheets use a few data: images
        "connect-src": [SELF],  # the job page's EventSource and fetch
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
# The defaults serve plain http on one machine; production behind TLS sets these (README "Production settings").
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
# Probes and scrapers on the inside may speak plain http.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", False)
# The header a TLS-terminating proxy sets to "https" (e.g. X-Forwarded-Proto); unset = no proxy is trusted.
_PROXY_SSL_HEADER = envstr("SECURE_PROXY_SSL_HEADER", "")
if _PROXY_SSL_HEADER and not re.fullmatch(r"[A-Za-z0-9_-]+", _PROXY_SSL_HEADER):
    raise ImproperlyConfigured(
        f"SECURE_PROXY_SSL_HEADER={_PROXY_SSL_HEADER!r} is not a header name (e.g. X-Forwarded-Proto)"
    )
_PROXY_SSL_META = "HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_").removeprefix("HTTP_")
SECURE_PROXY_SSL_HEADER = (_PROXY_SSL_META, "https") if _PROXY_SSL_HEADER else None

# --- I18N / static -----------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(VAR_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve app static files straight from the finders unless `collectstatic` was run for production.
WHITENOISE_USE_FINDERS = envbool("WHITENOISE_USE_FINDERS", True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    # axes: its warnings (repeated failures, lockouts) only, not a line per handled attempt.
    "loggers": {"django.db.backends": {"level": "INFO"}, "axes": {"level": "WARNING"}},
}

# --- Jobs --------------------------------------------------------------------------------------------------
# The hard limit of one generation; enforced by Engine.generate(deadline=...) because Celery's own time
# limits do nothing in the threads pool the workers use.
JOB_TIME_LIMIT_S = envint("JOB_TIME_LIMIT_S", 600, minimum=1)
# How many deliveries a job may get: a redelivered running job (its worker died) is re-claimed while its
# attempts are below this, and failed "worker lost N times" after.
JOB_MAX_ATTEMPTS = envint("JOB_MAX_ATTEMPTS", 3, minimum=1)
# A running job's worker renews its lease every third of this; a job whose lease expired is queued again (or
# failed after JOB_MAX_ATTEMPTS) by the reconciler, which one live worker runs every RECONCILE_INTERVAL_S.
JOB_LEASE_S = envint("JOB_LEASE_S", 30, minimum=3)
RECONCILE_INTERVAL_S = envint("RECONCILE_INTERVAL_S", 15, minimum=1)
JOBS_PER_PAGE = envint("JOBS_PER_PAGE", 20, minimum=1)
# Jobs one worker process runs at once; they share the resident Engine's batch (used by runsite).
WORKER_CONCURRENCY = envint("WORKER_CONCURRENCY", 4, minimum=1)
# Load the default checkpoint when a worker starts, in the background, instead of on the first job.
WORKER_PRELOAD_DEFAULT = envbool("WORKER_PRELOAD_DEFAULT", True)
# The Engine's KV cache: slots (concurrent requests per process) x positions. Forms check prompt + max tokens
# against min(checkpoint context length, ENGINE_MAX_SEQ_LEN), the window the workers actually serve.
# 8 x 2048 at float16 is ~380 MB for SmolLM2-135M.
ENGINE_MAX_BATCH_SIZE = envint("ENGINE_MAX_BATCH_SIZE", 8, minimum=1)
ENGINE_MAX_SEQ_LEN = envint("ENGINE_MAX_SEQ_LEN", 2048, minimum=16)
#: Memory for resident checkpoints and their KV caches in one worker; 0 = 90% of the GPU, or 8 GiB on the CPU.
WORKER_MEMORY_BUDGET_BYTES = envint("WORKER_MEMORY_BUDGET_BYTES", 0, minimum=0)
# Weights' dtype: "" = the engine's default (float16 on CPU, bfloat16 on CUDA), or float32 / float16 / bfloat16
# (float32 for a checkpoint whose activations overflow float16). ENGINE_QUANTIZATION: "" (none), int8 or int4;
# README "Engine speed" gives what each costs and gives.
ENGINE_DTYPE = envstr("ENGINE_DTYPE", "")
ENGINE_QUANTIZATION = envstr("ENGINE_QUANTIZATION", "")
if ENGINE_DTYPE not in ("", "float32", "float16", "bfloat16"):
    raise ImproperlyConfigured(f"ENGINE_DTYPE={ENGINE_DTYPE!r}: use float32, float16 or bfloat16 (or leave it unset)")
if ENGINE_QUANTIZATION not in ("", "int8", "int4"):
    raise ImproperlyConfigured(f"ENGINE_QUANTIZATION={ENGINE_QUANTIZATION!r}: use int8 or int4 (or leave it unset)")
# On CPU, weights a GGUF file stores as Q4_1 / Q8_0 blocks are computed from those blocks by our C++ kernel (built
# on first use with the host's compiler; modelzoo/engine/block_linear.py); False packs them as float16 for FBGEMM.
ENGINE_BLOCK_KERNELS = envbool("ENGINE_BLOCK_KERNELS", True)
# None = CUDA when present, else CPU.
ENGINE_DEVICE = os.environ.get("ENGINE_DEVICE") or None
# torch threads of the worker's engine, the validation child and finetune; 0 = automatic: the host's cores, less
# one when LLMSITE_SHARED_HOST=1 (the web server runs here) and less those other work keeps busy, measured
# every second while an engine runs (modelzoo.engine.threads.ThreadGovernor; README "Engine speed").
ENGINE_THREADS = envint("ENGINE_THREADS", 0, minimum=0)
HEALTHZ_TIMEOUT_S = envfloat("HEALTHZ_TIMEOUT_S", 1.0, minimum=0.1)

# --- Redis / Celery ----------------------------------------------------------------------------------------
# REDIS_URL when set; otherwise the local Redis that `manage.py runsite` starts on LLMSITE_REDIS_PORT.
LOCAL_REDIS_PORT = envint("LLMSITE_REDIS_PORT", 6389, minimum=1)
REDIS_URL = envstr("REDIS_URL", f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0")
BROKER_CONNECT_TIMEOUT_S = envfloat("BROKER_CONNECT_TIMEOUT_S", 2.0, minimum=0.1)

# A message not acked within the visibility timeout is redelivered, so it must outlast the longest job.
CELERY_VISIBILITY_TIMEOUT_S = envint("CELERY_VISIBILITY_TIMEOUT_S", JOB_TIME_LIMIT_S + 60, minimum=1)
if CELERY_VISIBILITY_TIMEOUT_S <= JOB_TIME_LIMIT_S:
    raise ImproperlyConfigured(
        f"CELERY_VISIBILITY_TIMEOUT_S={CELERY_VISIBILITY_TIMEOUT_S} must exceed JOB_TIME_LIMIT_S={JOB_TIME_LIMIT_S}, "
        "or running jobs are delivered twice"
    )
CELERY_RESTORE_INTERVAL_S = envint("CELERY_RESTORE_INTERVAL_S", 10, minimum=1)

CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_TIMEOUT = BROKER_CONNECT_TIMEOUT_S
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT_S,
    "unacked_restore_interval": CELERY_RESTORE_INTERVAL_S,
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
    "socket_timeout": envfloat("BROKER_SOCKET_TIMEOUT_S", 10.0, minimum=0.1),
    # Publishing: give up after a short retry so a dead Redis fails the submit fast.
    "max_retries": 1,
}
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Routing (generation.routing): every worker consumes the default queue and its own direct queue
# (`<hostname>.dq2`), plus `checkpoint.<id>` for each checkpoint it holds.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_WORKER_DIRECT = True

# --- checkpoints ---------------------------------------------------------------------------------------------
#: Uploaded checkpoints are stored here (one folder each); nothing of an upload is written elsewhere.
CHECKPOINT_DIR = Path(envstr("CHECKPOINT_DIR", str(VAR_DIR / "checkpoints")))
CHECKPOINT_MAX_UPLOAD_BYTES = envint("CHECKPOINT_MAX_UPLOAD_BYTES", 20 * 1024**3, minimum=1)
#: What a .zip upload may inflate to.
CHECKPOINT_MAX_UNPACKED_BYTES = envint("CHECKPOINT_MAX_UNPACKED_BYTES", 64 * 1024**3, minimum=1)
#: Limits of the child process that parses, loads and smoke-tests an upload (see modelzoo.validation).
VALIDATION_TIMEOUT_S = envint("VALIDATION_TIMEOUT_S", 600, minimum=1)
VALIDATION_MEMORY_BYTES = envint("VALIDATION_MEMORY_BYTES", 16 * 1024**3, minimum=256 * 1024**2)
#: The child's own memory (Python, torch, the tokenizer) before the checkpoint's; its limit grows from this with
#: what the upload's headers declare, up to VALIDATION_MEMORY_BYTES.
VALIDATION_BASE_MEMORY_BYTES = envint("VALIDATION_BASE_MEMORY_BYTES", 512 * 1024**2, minimum=128 * 1024**2)
# Uploads larger than this go to a temporary file instead of memory, chunk by chunk.
FILE_UPLOAD_MAX_MEMORY_SIZE = envint("FILE_UPLOAD_MAX_MEMORY_SIZE", 8 * 1024**2, minimum=0)

# --- Streams and the /v1 API ---------------------------------------------------------------------------------
#: How long a finished job's token stream stays in Redis (late or reconnecting readers replay it).
STREAM_TTL_S = envint("STREAM_TTL_S", 3600, minimum=1)
# Open token streams (job pages, streamed API answers) one user may hold at once; past it 429.
STREAMS_PER_USER = envint("STREAMS_PER_USER", 20, minimum=1)
#: A worker counts as alive while its last heartbeat (every WORKER_HEARTBEAT_TTL_S / 3) is this recent.
WORKER_HEARTBEAT_TTL_S = envint("WORKER_HEARTBEAT_TTL_S", 15, minimum=3)
#: /v1 requests one user may make per minute (0 = no limit).
API_RATE_LIMIT_PER_MIN = envint("API_RATE_LIMIT_PER_MIN", 60, minimum=0)
#: Unfinished jobs one user may have before /v1 answers 429 (0 = no limit).
API_MAX_ACTIVE_JOBS_PER_USER = envint("API_MAX_ACTIVE_JOBS_PER_USER", 16, minimum=0)
#: Queued jobs of all users before /v1 answers 429 (0 = no limit).
QUEUE_MAX_LENGTH = envint("QUEUE_MAX_LENGTH", 1000, minimum=0)

# --- /metrics ------------------------------------------------------------------------------------------------
#: A Bearer token that may read /metrics (a Prometheus scraper); empty = staff users only.
METRICS_TOKEN = envstr("METRICS_TOKEN", "")
#: The histograms of queue wait, time to first token and tokens/s cover the jobs created this many seconds back.
METRICS_WINDOW_S = envint("METRICS_WINDOW_S", 3600, minimum=60)

"""Settings: one module, driven by environment variables with embedded defaults.

With nothing set this is the embedded default: SQLite under var/, Celery on a
filesystem broker under var/, and a SQLite-backed channel layer, so one laptop
runs the whole system without PostgreSQL or Redis. DATABASE_URL and REDIS_URL
switch to the real services; production differs only by environment.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from orchestrator.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_networks,
    env_rate,
    env_str,
    parse_database_url,
    parse_http_url,
    parse_redis_url,
    read_or_create_secret_key,
)
from orchestrator.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("ORCHESTRATOR_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

# Off unless turned on: Django's debug page lists every setting, the database URL included.
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY") or read_or_create_secret_key(
    Path(env_str("SECRET_KEY_FILE", str(VAR_DIR / "secret_key")))
)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Behind TLS (production), from the environment; `manage.py check --deploy` is clean with them on.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", SECURE_HSTS_SECONDS > 0)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", SECURE_SSL_REDIRECT)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", SECURE_SSL_REDIRECT)
# The proxy in front says the request came over TLS (X-Forwarded-Proto: https).
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Health probes come over plain HTTP from the orchestrator (kubelet, compose), never redirected.
SECURE_REDIRECT_EXEMPT = [r"^live$", r"^ready$", r"^health$"]

# Request bodies: a session prompt is at most 100,000 characters; 2.5 MB leaves room for JSON
# documents (contexts) and is what Django answers 413 above.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2_621_440, minimum=1024)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_htmx",
    "template_partials",
    "orchestrator",
    "sessions.apps.SessionsConfig",
    "agents",
    "tasks",
    "contexts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "orchestrator.middleware.NulQueryStringMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "orchestrator.middleware.DomainErrorPagesMiddleware",
]
# First, so the request id and the timing cover everything below them.
MIDDLEWARE[:0] = ["orchestrator.logs.RequestIdMiddleware", "orchestrator.metrics.RequestMetricsMiddleware"]

ROOT_URLCONF = "orchestrator.urls"
ASGI_APPLICATION = "orchestrator.asgi.application"
WSGI_APPLICATION = "orchestrator.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "orchestrator.context_processors.console",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'orchestrator.sqlite3'}"
_database = parse_database_url("DATABASE_URL", DATABASE_URL)
if _database["ENGINE"].endswith("sqlite3"):
    # WAL lets the web process read while a worker writes; IMMEDIATE takes the
    # write lock at BEGIN so concurrent writers queue instead of failing mid-way.
    _database["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _database["TEST"] = {"NAME": str(VAR_DIR / "test-orchestrator.sqlite3")}
else:
    # A connection pool per process (psycopg_pool): a worker opens database connections from many
    # short-lived threads (each session's task and checkpoint threads), and a new PostgreSQL
    # connection costs ~4-5 ms on the path from API start to prompt. DATABASE_POOL_MAX_SIZE=0
    # turns it off (then DATABASE_CONN_MAX_AGE applies, as in Django).
    _pool_max_size = env_int("DATABASE_POOL_MAX_SIZE", 60, minimum=0)
    if _pool_max_size:
        _database["OPTIONS"] = {**_database.get("OPTIONS", {}), "pool": {
            "min_size": min(2, _pool_max_size), "max_size": _pool_max_size,
            "max_idle": 120.0,  # seconds an idle connection above min_size is kept
            "timeout": env_int("DATABASE_POOL_TIMEOUT", 30, minimum=1),  # seconds a thread waits when all are busy
        }}
    else:
        _database["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0)
    _database["CONN_HEALTH_CHECKS"] = True
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, broker, channel layer -------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    parse_redis_url("REDIS_URL", REDIS_URL)

BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or "fsqueue://"
if CELERY_BROKER_URL.startswith(("fsqueue://", "filesystem://")):
    for folder in ("queue", "processed", "control"):
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.05,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    parse_redis_url("CELERY_BROKER_URL", CELERY_BROKER_URL)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Longer than the longest step, so a slow session is not redelivered
        # to a second worker while the first still runs it.
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 7 * 3600, minimum=60),
        # Queues are listed by priority when the worker starts; consume them in that order.
        "queue_order_strategy": "priority",
    }
else:
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL must be redis://, rediss:// or fsqueue:// (the embedded queue), got {CELERY_BROKER_URL!r}"
    )

CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Periodic jobs (run by beat: embedded in the worker by bin/run, a separate service in production).
CELERY_BEAT_SCHEDULE = {
    "agents-mark-stale-offline": {"task": "agents.mark_stale_offline", "schedule": 60.0},
    "contexts-purge-expired": {"task": "contexts.purge_expired", "schedule": 600.0},
    "sessions-reconcile": {"task": "sessions.reconcile", "schedule": 10.0},
    "sessions-dispatch": {"task": "sessions.dispatch", "schedule": 5.0},
    "sessions-cleanup-workspaces": {"task": "sessions.cleanup_workspaces", "schedule": 3600.0},
}

# One queue per session priority class; a worker lists them in this order.
SESSION_QUEUES = {
    0: "sessions-critical",
    1: "sessions-high",
    2: "sessions-medium",
    3: "sessions-low",
    4: "sessions-low",
}
WORKER_QUEUES = ["sessions-critical", "sessions-high", "sessions-medium", "sessions-low", "default"]

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # Redis pub/sub, not the list-based RedisChannelLayer: with that one, the consumers of a
            # process take turns popping the process's shared list, and a consumer cancelled mid-pop
            # (its WebSocket client leaving) lost the message it had popped for another consumer
            # (seen as a client that never got its session's `completed` event while 20 sessions
            # ended together; django/channels#1683). Events are durable in the database anyway:
            # a client that reconnects with ?after=<last id> gets what it missed.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            # No client-side read timeout (redis-py 8 reads out after 5 s by default, which dropped
            # quiet WebSocket clients in the list-based layer).
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "orchestrator.channel_layer.SQLiteChannelLayer",
            "CONFIG": {"path": str(VAR_DIR / "channels.sqlite3")},
        }
    }

# --- Auth, API ---------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "orchestrator.auth.ThrottledTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["orchestrator.permissions.IsOperatorOrReadOnly"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "orchestrator.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON only: one parser to harden (orchestrator.inputs), one body format to document.
    "DEFAULT_PARSER_CLASSES": ["orchestrator.inputs.StrictJSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_THROTTLE_CLASSES": ["orchestrator.throttles.WriteThrottle"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

# Rates ("N/second|minute|hour|day"; empty turns a throttle off), read on every request
# (orchestrator.throttles): writes per user (or address), failed authentications per address.
API_THROTTLE_RATES = {
    "write": env_rate("API_THROTTLE_WRITE", "120/minute"),
    "auth_failure": env_rate("API_THROTTLE_AUTH_FAILURE", "20/minute"),
}
# Throttle and sign-in counters live in the cache: per process by default (one web process in the
# embedded default); CACHE_URL (Redis, e.g. a database of its own) shares them across web replicas.
CACHE_URL = env_str("CACHE_URL")
if CACHE_URL:
    parse_redis_url("CACHE_URL", CACHE_URL)
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
# Console sign-in: this many failures for one user name or address lock it for LOGIN_LOCKOUT_SECONDS.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
# Sessions one user may have that have not ended (pending, queued, running, paused, degraded); 0: no cap.
SESSION_LIMIT_PER_USER = env_int("SESSION_LIMIT_PER_USER", 100, minimum=0)

SPECTACULAR_SETTINGS = {
    "TITLE": "Industrial Orchestrator API",
    "DESCRIPTION": "Coding sessions on OpenCode: sessions, agents, tasks and contexts.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "orchestrator.schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "SessionStatusEnum": "sessions.models.SessionStatus",
        "TaskStatusEnum": "tasks.models.TaskStatus",
        "TaskPriorityEnum": "tasks.models.TaskPriority",
        "SessionPriorityEnum": [(0, "Critical"), (1, "High"), (2, "Medium"), (3, "Low"), (4, "Deferred")],
        "CapabilityEnum": "agents.routing.CAPABILITIES",
        "AgentTypeEnum": "agents.models.AgentType",
        "PermissionReplyEnum": "sessions.models.PermissionReply",
        "PermissionRequestStatusEnum": "sessions.models.PermissionRequestStatus",
    },
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Static files -------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- OpenCode and workspaces -----------------------------------------------------
OPENCODE_VERSION = "1.18.33"
def _default_opencode_bin():
    # bin/setup installs the baseline build on CPUs without AVX2.
    modules = BASE_DIR / "var" / "opencode" / "node_modules"
    for package in ("opencode-linux-x64", "opencode-linux-x64-baseline"):
        candidate = modules / package / "bin" / "opencode"
        if candidate.exists():
            return str(candidate)
    return str(modules / "opencode-linux-x64" / "bin" / "opencode")


OPENCODE_BIN = env_str("OPENCODE_BIN") or _default_opencode_bin()
OPENCODE_URL = env_str("OPENCODE_URL")
if OPENCODE_URL:
    OPENCODE_URL = parse_http_url("OPENCODE_URL", OPENCODE_URL)
OPENCODE_SERVER_PASSWORD = env_str("OPENCODE_SERVER_PASSWORD")
OPENCODE_CONFIG = env_str("OPENCODE_CONFIG")
OPENCODE_CONFIG_CONTENT = env_str("OPENCODE_CONFIG_CONTENT")
OPENCODE_STARTUP_TIMEOUT = env_float("OPENCODE_STARTUP_TIMEOUT", 60.0, minimum=1.0)
# A safety net: runs close their worktrees in OpenCode (servers.close_directory), and a server closing
# them kept an even pace over 121 directories (6 waves of 20, measured); retired after this many anyway.
OPENCODE_SERVER_MAX_DIRECTORIES = env_int("OPENCODE_SERVER_MAX_DIRECTORIES", 256, minimum=1, maximum=1000)
# OpenCode's (Bun's) memory mappings grow with the directories it opens (1k to 13k opening 12 one at a
# time; the 65,530 of the default vm.max_map_count after ~50 opened in bursts of 20). At the limit its
# allocator retries a failing madvise() forever and the server hangs at 100 % CPU. A managed server is
# retired when its mappings reach this share of the limit (sessions.execution.servers).
OPENCODE_SERVER_MAX_MAP_SHARE = env_float("OPENCODE_SERVER_MAX_MAP_SHARE", 0.5, minimum=0.01)
# OpenCode's own snapshots of each worktree: off, as git already holds our checkpoints and diffs.
OPENCODE_SNAPSHOTS = env_bool("OPENCODE_SNAPSHOTS", False)
OPENCODE_REQUEST_TIMEOUT = env_float("OPENCODE_REQUEST_TIMEOUT", 30.0, minimum=0.1)
# The demo model: the project's own scripted LLM, for machines with no LLM account.
OPENCODE_DEMO_MODEL = env_bool("OPENCODE_DEMO_MODEL", not (OPENCODE_CONFIG or OPENCODE_CONFIG_CONTENT))

# A scripted LLM already running (tests start one to read its request log).
OPENCODE_SCRIPTED_LLM_URL = env_str("OPENCODE_SCRIPTED_LLM_URL")
if OPENCODE_SCRIPTED_LLM_URL:
    OPENCODE_SCRIPTED_LLM_URL = parse_http_url("OPENCODE_SCRIPTED_LLM_URL", OPENCODE_SCRIPTED_LLM_URL)

# Execution control (seconds unless named otherwise).
SESSION_TASK_CONCURRENCY = env_int("SESSION_TASK_CONCURRENCY", 1, minimum=1, maximum=16)
# Planning defaults of a new session (its `planning` option overrides them; see sessions.planning).
SESSION_PLANNING_MODE = env_str("SESSION_PLANNING_MODE", "single")
if SESSION_PLANNING_MODE not in ("single", "template", "planner"):
    raise ImproperlyConfigured(
        f"SESSION_PLANNING_MODE must be single, template or planner, got {SESSION_PLANNING_MODE!r}"
    )
SESSION_PLAN_APPROVAL = env_str("SESSION_PLAN_APPROVAL", "required")
if SESSION_PLAN_APPROVAL not in ("required", "auto"):
    raise ImproperlyConfigured(f"SESSION_PLAN_APPROVAL must be required or auto, got {SESSION_PLAN_APPROVAL!r}")
SESSION_REPLAN_LIMIT = env_int("SESSION_REPLAN_LIMIT", 1, minimum=0, maximum=5)
# A plan task's acceptance command (sessions.execution.acceptance): its time limit.
ACCEPTANCE_TIMEOUT_SECONDS = min(env_float("ACCEPTANCE_TIMEOUT_SECONDS", 300.0, minimum=1.0), 3600.0)
SESSION_STALL_SECONDS = env_float("SESSION_STALL_SECONDS", 120.0, minimum=1.0)
SESSION_HEARTBEAT_SECONDS = env_float("SESSION_HEARTBEAT_SECONDS", 5.0, minimum=0.5)
SESSION_WORKER_LOST_SECONDS = env_float("SESSION_WORKER_LOST_SECONDS", 30.0, minimum=2.0)
PERMISSION_TIMEOUT_SECONDS = env_float("PERMISSION_TIMEOUT_SECONDS", 300.0, minimum=1.0)
PERMISSION_DEGRADE_SECONDS = env_float("PERMISSION_DEGRADE_SECONDS", 60.0, minimum=1.0)
PERMISSION_DEFAULT_REPLY = env_str("PERMISSION_DEFAULT_REPLY", "reject")
if PERMISSION_DEFAULT_REPLY not in ("once", "always", "reject"):
    raise ImproperlyConfigured(
        f"PERMISSION_DEFAULT_REPLY must be once, always or reject, got {PERMISSION_DEFAULT_REPLY!r}"
    )
# Concurrency limits, enforced in the database so they hold across worker hosts (0 = no limit).
SESSION_LIMIT_GLOBAL = env_int("SESSION_LIMIT_GLOBAL", 0, minimum=0)
SESSION_LIMIT_PER_REPOSITORY = env_int("SESSION_LIMIT_PER_REPOSITORY", 0, minimum=0)
SESSION_LIMIT_PER_AGENT = env_int("SESSION_LIMIT_PER_AGENT", 0, minimum=0)
# Automatic retries wait min(base * 2^(n-1), 300 s) (SPEC: base 10 s).
SESSION_RETRY_BASE_SECONDS = env_float("SESSION_RETRY_BASE_SECONDS", 10.0, minimum=0.0)
WORKSPACE_RETENTION_HOURS = env_float("WORKSPACE_RETENTION_HOURS", 24.0, minimum=0.0)
# Worktrees a worker keeps ready per repository it has run, already opened by its OpenCode server
# (sessions.execution.spares): a session's first prompt reaches the LLM in ~70 ms instead of ~1 s.
WORKSPACE_SPARES = env_int("WORKSPACE_SPARES", 2, minimum=0, maximum=16)

WORKSPACE_ROOT = Path(env_str("WORKSPACE_ROOT", str(VAR_DIR / "workspaces"))).resolve()
REPOSITORY_ROOTS = [Path(p).resolve() for p in env_list("REPOSITORY_ROOTS", [str(VAR_DIR / "repos")])]

WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", 8, minimum=1, maximum=256)
# What a plain `celery -A orchestrator worker` uses (orchestrator.celery declares the queues):
# sessions run in threads (each holds an OpenCode event stream); prefork would run 2 per CPU.
CELERY_WORKER_POOL = "threads"
CELERY_WORKER_CONCURRENCY = WORKER_CONCURRENCY

# --- Observability (orchestrator.metrics, orchestrator.logs; docs/configuration.md) ----------------
METRICS_TOKEN = env_str("METRICS_TOKEN")
METRICS_ALLOWED_NETWORKS = env_networks("METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"])
# prometheus-client's multi-process mode reads the folder from the environment when it is imported.
PROMETHEUS_MULTIPROC_DIR = Path(env_str("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "prometheus"))).resolve()
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_MULTIPROC_DIR)
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0, minimum=0, maximum=65535)
WORKER_METRICS_ADDRESS = env_str("WORKER_METRICS_ADDRESS", "127.0.0.1")
LOG_FORMAT = env_choice("LOG_FORMAT", "plain", ["plain", "json"])
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
LOGGING = logging_config(log_format=LOG_FORMAT, level=LOG_LEVEL)

"""Settings of the task board example. Everything that differs between
machines comes from TASKBOARD_* environment variables (scripts/demo.sh sets
them); the defaults suit `manage.py runserver` next to `manage.py
telegraphy_gateway` on this machine."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name, default=None):
    return os.environ.get(f"TASKBOARD_{name}") or default


SECRET_KEY = env("DJANGO_SECRET_KEY", "django-insecure-taskboard-example-only")
DEBUG = env("DEBUG", "true") == "true"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "telegraphy.django",
    "board",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "taskboard.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [BASE_DIR / "templates"],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",  # {% telegraphy_scripts %} needs the request
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
WSGI_APPLICATION = "taskboard.wsgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": env("DB", BASE_DIR / "db.sqlite3")}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True
STATIC_URL = "static/"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "board"
LOGOUT_REDIRECT_URL = "login"
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"telegraphy": {"handlers": ["console"], "level": "INFO"}},
}

# Telegraphy: the gateway browsers connect to, how Django publishes, and the
# secrets the gateway shares (scripts/demo.sh generates fresh ones).
TELEGRAPHY = {
    "GATEWAY_URL": env("GATEWAY_URL", "ws://127.0.0.1:8080/ws"),
    "API_KEY": env("API_KEY", "taskboard-dev-api-key"),
    "SECRET": env("SECRET", "taskboard-dev-secret-0123456789abcdef"),
    # The gateway's rpc.secret: board/procedures.py serves calls from pages.
    "RPC_SECRET": env("RPC_SECRET", "taskboard-dev-rpc-secret-0123456789abcdef"),
    "TOPIC_PREFIX": "taskboard",
    "ALLOWED_ORIGINS": env("ORIGINS", "http://127.0.0.1:8000,http://localhost:8000").split(","),
}
if env("PUBLISH_URL"):
    TELEGRAPHY["PUBLISH_URL"] = env("PUBLISH_URL")  # default: the HTTP endpoint next to GATEWAY_URL
if env("BUS"):
    TELEGRAPHY["BUS"] = env("BUS")
    TELEGRAPHY["REDIS_KEY_PREFIX"] = env("REDIS_KEY_PREFIX", "telegraphy:")
if env("GATEWAY_BIN"):
    TELEGRAPHY["GATEWAY_BIN"] = env("GATEWAY_BIN")

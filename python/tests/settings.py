"""Django settings for the test suite. TELEGRAPHY points at a placeholder
gateway; tests that need a real one override it (see conftest.py)."""

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "telegraphy.django",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
    ]},
}]
STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

TELEGRAPHY = {
    "GATEWAY_URL": "ws://127.0.0.1:9/ws",
    "API_KEY": "test-api-key-123",
    "SECRET": "test-secret-0123456789-0123456789-abcdef",
    "RPC_SECRET": "test-rpc-secret-0123456789-0123456789-abcdef",
    "TOPIC_PREFIX": "tests",
    "FAIL_SILENTLY": False,
}

"""Settings of the example: one database for Django, the products and batchkit's tables.

Environment:
    DATABASE_URL: ``sqlite:///db.sqlite3`` (the default: a file in the working
        directory), ``sqlite:////absolute/path.db`` or
        ``postgresql://user:password@host:5432/name``.
    DJANGO_SECRET_KEY: the key that signs sessions and CSRF tokens; set it anywhere but
        on your own machine (the default is public, in this file).
    DJANGO_DEBUG: ``1`` for Django's debug pages.
    DEMO_PASSWORD: the password ``migrate`` gives the demo users ``ada`` and ``bob``.
    PRODUCTS_RENDER_DELAY: seconds each of the generator's four steps takes (0.3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__: list[str] = []

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "example-only-key-set-DJANGO_SECRET_KEY"
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "batchkit.contrib.django",
    "products",
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

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

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


def _database(url: str) -> dict[str, Any]:
    """A ``DATABASES`` entry from a URL: ``sqlite:///path`` or ``postgresql://...``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parts.path[1:])}
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path[1:]),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    raise ValueError("DATABASE_URL must start with sqlite:/// or postgresql://")


DATABASES = {"default": _database(os.environ.get("DATABASE_URL", "sqlite:///db.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# batchkit's tables go to the default database, with their usual prefix: the defaults,
# written out to show where they are set.
BATCHKIT = {"DATABASE": "default", "TABLE_PREFIX": "batchkit_"}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "products"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

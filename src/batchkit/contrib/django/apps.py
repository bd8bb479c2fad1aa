"""The Django app config of ``batchkit.contrib.django`` (its label: ``batchkit``)."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["BatchkitConfig"]


class BatchkitConfig(AppConfig):  # type: ignore[misc]  # Django is untyped here
    """batchkit's tables, made by its migrations; nothing connects when the app loads."""

    name = "batchkit.contrib.django"
    label = "batchkit"
    verbose_name = "batchkit"

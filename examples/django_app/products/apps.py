"""The products app's config."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["ProductsConfig"]


class ProductsConfig(AppConfig):
    name = "products"
    default_auto_field = "django.db.models.BigAutoField"

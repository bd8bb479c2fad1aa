"""The example's URLs: the sign-in pages of ``django.contrib.auth``, and the products app."""

from __future__ import annotations

from django.urls import include, path

__all__ = ["urlpatterns"]

urlpatterns = [
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("products.urls")),
]

"""The products app's URLs."""

from __future__ import annotations

from django.urls import path

from . import views

__all__ = ["urlpatterns"]

urlpatterns = [
    path("", views.home, name="home"),
    path("products/", views.products, name="products"),
    path("batches/", views.batches, name="batches"),
    path("batches/<str:batch_id>/", views.batch, name="batch"),
    path("batches/<str:batch_id>/status.json", views.batch_json, name="batch-json"),
    path("batches/<str:batch_id>/retry/", views.retry_failed, name="batch-retry"),
]

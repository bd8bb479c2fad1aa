"""The catalogue: products with a name and a price."""

from __future__ import annotations

from django.db import models

__all__ = ["Product"]


class Product(models.Model):
    """A product of the catalogue; a batch renders some of them."""

    name = models.CharField(max_length=100, unique=True)
    price = models.DecimalField(max_digits=8, decimal_places=2)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

"""The bundled product catalog (``products.json``): 48 products, a few of them unusable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["Product", "by_id", "catalog"]

CATALOG = Path(__file__).with_name("products.json")


@dataclass(frozen=True)
class Product:
    """One product of the catalog. ``image`` is the name of its picture, or `None`."""

    id: str
    title: str
    price: float
    colour: str
    image: str | None

    @property
    def usable(self) -> bool:
        """Whether a video can be made of it: it needs a picture and a price."""
        return self.image is not None and self.price > 0

    def payload(self) -> dict[str, Any]:
        """What the generator gets: the product as it was when the batch was submitted."""
        return asdict(self)


@cache
def catalog() -> tuple[Product, ...]:
    """Every product, in catalog order."""
    data = json.loads(CATALOG.read_text(encoding="utf-8"))
    return tuple(Product(**entry) for entry in data["products"])


@cache
def by_id() -> dict[str, Product]:
    """The products by id."""
    return {product.id: product for product in catalog()}

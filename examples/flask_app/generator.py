"""The example's generator: "renders" one product's video in four steps.

A worker runs it, never the web process: ``python -m batchkit worker --storage URL
--generator examples.flask_app.generator:render``. A product without a picture or a price
(P-007 and P-012 of the catalog) fails with an error that says why, so that "Retry
failed" has something to do.

``BATCHKIT_FLASK_ITEM_SECONDS`` is how long an item takes (0.5 s by default).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import anyio

from examples.fastapi_app.catalog import Product

if TYPE_CHECKING:
    from batchkit import ItemContext

__all__ = ["STEPS", "UnusableProduct", "item_seconds", "render"]

#: What each step reports, in order.
STEPS = ("script", "frames", "encode", "upload")


class UnusableProduct(ValueError):
    """The product lacks what its video needs (a picture, a price)."""


def item_seconds() -> float:
    """How long one item takes, from ``BATCHKIT_FLASK_ITEM_SECONDS``."""
    return float(os.environ.get("BATCHKIT_FLASK_ITEM_SECONDS", "0.5"))


async def render(ctx: ItemContext) -> dict[str, Any]:
    """Render one product's video (the payload is the product), step by step."""
    product = Product(**ctx.payload)
    pause = item_seconds() / len(STEPS)
    for number, step in enumerate(STEPS):
        await ctx.progress(number / len(STEPS), f"{step}: step {number + 1} of {len(STEPS)}")
        await anyio.sleep(pause)
        if step == "script" and not product.usable:
            missing = "picture" if product.image is None else "price"
            raise UnusableProduct(f"{product.title} ({product.id}) has no {missing}")
    return {"video": f"{product.id}.mp4", "steps": len(STEPS)}

"""The generator: "renders" one product in four steps, reporting each.

The worker runs it: ``python manage.py batchkit_worker --generator
products.generator:render``. ``PRODUCTS_RENDER_DELAY`` is the seconds each step takes
(0.3 by default). "Cursed Lamp" always fails, so that a batch has something to retry.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from batchkit import ItemContext

__all__ = ["FAILING", "STEPS", "RenderError", "render"]

STEPS = ("layout", "lighting", "shading", "packshot")
#: The product no render succeeds for.
FAILING = "Cursed Lamp"


class RenderError(RuntimeError):
    """A product that cannot be rendered."""


def _delay() -> float:
    return float(os.environ.get("PRODUCTS_RENDER_DELAY", "0.3"))


async def render(ctx: ItemContext) -> dict[str, Any]:
    """Render the product of ``ctx.payload`` (``name``, ``price``): its image's name."""
    name = str(ctx.payload["name"])
    price = Decimal(str(ctx.payload["price"]))
    delay = _delay()
    for done, step in enumerate(STEPS):
        await ctx.progress(done / len(STEPS), f"{step}…")
        await anyio.sleep(delay)
        if name == FAILING and step == "shading":
            raise RenderError(f"{name}: the shading step found no light to cast")
    await ctx.progress(1.0, "rendered")
    slug = "-".join(name.lower().split())
    return {"image": f"{slug}.png", "caption": f"{name}, {price:.2f}"}

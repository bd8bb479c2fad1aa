"""batchkit's generator for the comparison: the shared no-op work of `marks.run_item`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from marks import run_item

if TYPE_CHECKING:
    from batchkit import ItemContext

__all__ = ["item"]


async def item(ctx: ItemContext) -> None:
    """Run the item's number under its tag; every 10th raises."""
    run_item(ctx.payload["n"], ctx.payload["tag"])

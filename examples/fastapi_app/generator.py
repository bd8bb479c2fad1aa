"""The studio's generator: a small animated video (a GIF) of one product, in four stages.

It is an ordinary batchkit generator, so the app's in-process worker runs it, and so can
separate workers: ``python -m batchkit worker --storage URL --generator
examples.fastapi_app.generator:generate`` (they must write to the folder the app serves).

Environment: ``BATCHKIT_STUDIO_OUTPUT`` is where videos are written (``studio-output`` in
the working directory by default); ``BATCHKIT_STUDIO_SPEED`` scales every pause (1.0: about
two seconds per product; 0.1 is ten times faster).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from . import art
from .catalog import Product

if TYPE_CHECKING:
    from batchkit import ItemContext

__all__ = ["FRAMES", "UnusableProduct", "generate", "output_dir"]

#: Frames of each video.
FRAMES = 10


class UnusableProduct(ValueError):
    """The product lacks what its video needs (a picture, a price)."""


def output_dir() -> Path:
    """Where videos are written: ``<output>/<batch id>/<product id>.gif``."""
    return Path(os.environ.get("BATCHKIT_STUDIO_OUTPUT", "studio-output")).resolve()


def _speed() -> float:
    return float(os.environ.get("BATCHKIT_STUDIO_SPEED", "1.0"))


def _publish(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(path)  # readers never see half a file


async def generate(ctx: ItemContext) -> dict[str, Any]:
    """Make one product's video; report each stage; fail clearly on an unusable product."""
    speed = _speed()
    # The web app sends the whole product; a CSV row (the CLI) may leave the id to the key.
    product = Product(**{"id": ctx.key, **ctx.payload})
    await ctx.progress(0.02, "script: writing the script")
    await anyio.sleep(0.4 * speed)
    if product.image is None:
        raise UnusableProduct(
            f"{product.title} ({product.id}) has no image: add a product photo to make its video"
        )
    if product.price <= 0:
        raise UnusableProduct(
            f"{product.title} ({product.id}) has no price: a video cannot advertise a price of 0"
        )
    frames = []
    for n in range(FRAMES):
        frames.append(await anyio.to_thread.run_sync(art.frame, product, n, FRAMES))
        await ctx.progress(0.1 + 0.5 * (n + 1) / FRAMES, f"frames: {n + 1} of {FRAMES}")
        await anyio.sleep(0.1 * speed)
    await ctx.progress(0.65, "encode: animated GIF")
    data = await anyio.to_thread.run_sync(art.gif_bytes, frames)
    await anyio.sleep(0.3 * speed)
    await ctx.progress(0.9, "upload: publishing the video")
    path = output_dir() / ctx.batch_id / f"{product.id}.gif"
    await anyio.to_thread.run_sync(_publish, path, data)
    await anyio.sleep(0.3 * speed)
    return {
        "video": f"/media/{ctx.batch_id}/{product.id}.gif",
        "file": str(path),
        "frames": FRAMES,
        "bytes": len(data),
    }

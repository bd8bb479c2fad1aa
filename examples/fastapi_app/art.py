"""Pictures drawn with Pillow: each product's thumbnail and the frames of its video."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from collections.abc import Callable

    from .catalog import Product

__all__ = ["ICONS", "frame", "gif_bytes", "thumbnail_png"]

Box = tuple[float, float, float, float]


def _rgb(colour: str) -> tuple[int, int, int]:
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _ink(colour: str) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``colour``."""
    r, g, b = _rgb(colour)
    return (20, 20, 20) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (250, 250, 250)


def _tint(colour: str, amount: float) -> tuple[int, int, int]:
    r, g, b = _rgb(colour)
    return (
        int(r + (255 - r) * amount),
        int(g + (255 - g) * amount),
        int(b + (255 - b) * amount),
    )


def _mug(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rounded_rectangle((x0, y0, x1 - w * 0.25, y1), radius=w * 0.08, fill=c)
    d.ellipse((x1 - w * 0.38, y0 + w * 0.15, x1, y1 - w * 0.2), outline=c, width=int(w * 0.08))


def _lamp(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    cx, w = (x0 + x1) / 2, x1 - x0
    d.polygon(
        [(cx - w * 0.15, y0), (cx + w * 0.15, y0), (x1, y0 + w * 0.45), (x0, y0 + w * 0.45)], fill=c
    )
    d.rectangle((cx - w * 0.04, y0 + w * 0.45, cx + w * 0.04, y1 - w * 0.1), fill=c)
    d.rectangle((cx - w * 0.3, y1 - w * 0.1, cx + w * 0.3, y1), fill=c)


def _poster(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle(b, outline=c, width=int(w * 0.06))
    d.polygon(
        [(x0 + w * 0.1, y1 - w * 0.1), (x0 + w * 0.45, y0 + w * 0.3), (x1 - w * 0.2, y1 - w * 0.1)],
        fill=c,
    )
    d.ellipse((x1 - w * 0.35, y0 + w * 0.12, x1 - w * 0.15, y0 + w * 0.32), fill=c)


def _shirt(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.polygon(
        [
            (x0 + w * 0.3, y0),
            (x0 + w * 0.7, y0),
            (x1, y0 + w * 0.25),
            (x1 - w * 0.15, y0 + w * 0.4),
            (x1 - w * 0.2, y1),
            (x0 + w * 0.2, y1),
            (x0 + w * 0.15, y0 + w * 0.4),
            (x0, y0 + w * 0.25),
        ],
        fill=c,
    )


def _cap(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.pieslice((x0, y0 + w * 0.1, x1 - w * 0.15, y1 + w * 0.35), 180, 360, fill=c)
    d.rectangle((x0 + w * 0.4, y0 + w * 0.6, x1, y0 + w * 0.7), fill=c)


def _bag(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0, y0 + w * 0.35, x1, y1), fill=c)
    d.arc((x0 + w * 0.25, y0, x1 - w * 0.25, y0 + w * 0.7), 180, 360, fill=c, width=int(w * 0.07))


def _bottle(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    cx, w = (x0 + x1) / 2, x1 - x0
    d.rounded_rectangle((cx - w * 0.25, y0 + w * 0.3, cx + w * 0.25, y1), radius=w * 0.1, fill=c)
    d.rectangle((cx - w * 0.1, y0, cx + w * 0.1, y0 + w * 0.32), fill=c)


def _book(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + w * 0.1, y0, x1 - w * 0.1, y1), fill=c)
    d.line((x0 + w * 0.22, y0, x0 + w * 0.22, y1), fill=(255, 255, 255), width=int(w * 0.04))


def _clock(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    d.ellipse(b, outline=c, width=int(w * 0.08))
    d.line((cx, cy, cx, y0 + w * 0.2), fill=c, width=int(w * 0.06))
    d.line((cx, cy, x1 - w * 0.25, cy), fill=c, width=int(w * 0.06))


def _plant(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    cx, w = (x0 + x1) / 2, x1 - x0
    d.polygon(
        [
            (x0 + w * 0.2, y1 - w * 0.35),
            (x1 - w * 0.2, y1 - w * 0.35),
            (x1 - w * 0.3, y1),
            (x0 + w * 0.3, y1),
        ],
        fill=c,
    )
    for dx in (-0.25, 0.0, 0.25):
        d.ellipse((cx + w * dx - w * 0.12, y0, cx + w * dx + w * 0.12, y1 - w * 0.35), fill=c)


def _chair(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.rectangle((x0 + w * 0.2, y0, x0 + w * 0.3, y1), fill=c)
    d.rectangle((x0 + w * 0.2, y0 + w * 0.5, x1 - w * 0.2, y0 + w * 0.6), fill=c)
    d.rectangle((x1 - w * 0.3, y0 + w * 0.5, x1 - w * 0.2, y1), fill=c)


def _sock(d: ImageDraw.ImageDraw, b: Box, c: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    d.polygon(
        [
            (x0 + w * 0.3, y0),
            (x0 + w * 0.6, y0),
            (x0 + w * 0.6, y1 - w * 0.3),
            (x1, y1 - w * 0.2),
            (x1, y1),
            (x0 + w * 0.3, y1),
        ],
        fill=c,
    )


#: How each product picture is drawn, by the catalog's ``image`` name.
ICONS: dict[str, Callable[[ImageDraw.ImageDraw, Box, tuple[int, int, int]], None]] = {
    "mug": _mug,
    "lamp": _lamp,
    "poster": _poster,
    "shirt": _shirt,
    "cap": _cap,
    "bag": _bag,
    "bottle": _bottle,
    "book": _book,
    "clock": _clock,
    "plant": _plant,
    "chair": _chair,
    "sock": _sock,
}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def thumbnail_png(product: Product, size: int = 160) -> bytes:
    """The product's picture as PNG; a product without one gets a crossed-out box."""
    image = Image.new("RGB", (size, size), _tint(product.colour, 0.8))
    draw = ImageDraw.Draw(image)
    pad = size * 0.2
    if product.image in ICONS:
        ICONS[product.image](draw, (pad, pad, size - pad, size - pad), _rgb(product.colour))
    else:
        grey = (150, 150, 150)
        draw.rectangle((pad, pad, size - pad, size - pad), outline=grey, width=3)
        draw.line((pad, pad, size - pad, size - pad), fill=grey, width=3)
        draw.line((pad, size - pad, size - pad, pad), fill=grey, width=3)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def frame(
    product: Product, index: int, count: int, size: tuple[int, int] = (320, 200)
) -> Image.Image:
    """One frame of the product's video: its picture moving across, its title and price."""
    width, height = size
    image = Image.new("RGB", size, _rgb(product.colour))
    draw = ImageDraw.Draw(image)
    ink = _ink(product.colour)
    phase = index / max(1, count - 1)
    # The picture glides in from the left and bounces a little.
    icon = 90
    x = 20 + (width - icon - 40) * (0.5 - 0.5 * math.cos(math.pi * phase))
    y = 55 - 12 * abs(math.sin(math.pi * 2 * phase))
    draw.rounded_rectangle(
        (x - 6, y - 6, x + icon + 6, y + icon + 6), radius=12, fill=_tint(product.colour, 0.85)
    )
    if product.image in ICONS:
        ICONS[product.image](draw, (x + 8, y + 8, x + icon - 8, y + icon - 8), _rgb(product.colour))
    draw.text((14, 10), product.title, fill=ink, font=_font(22))
    draw.text((14, height - 36), f"${product.price:,.2f}", fill=ink, font=_font(24))
    draw.text((width - 110, height - 30), product.colour, fill=ink, font=_font(16))
    # Progress dots along the bottom edge.
    for n in range(count):
        cx = width / 2 - (count - 1) * 6 + n * 12
        fill = ink if n <= index else _tint(product.colour, 0.5)
        draw.ellipse((cx - 3, height - 8, cx + 3, height - 2), fill=fill)
    return image


def gif_bytes(frames: list[Image.Image], frame_ms: int = 120) -> bytes:
    """The frames as an animated GIF, looping forever."""
    out = io.BytesIO()
    frames[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=frame_ms,
        loop=0,
        optimize=True,
    )
    return out.getvalue()

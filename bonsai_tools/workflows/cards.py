"""Template-browser cards: the same-name ``.jpg`` next to each UI workflow.

Descriptive cards drawn with Pillow (title, variant, node chain) rather than rendered images: a real
render needs the 4B weights and a GPU, and a card must not pretend to be the model's output.
"""

from __future__ import annotations

import os
from pathlib import Path

TEXT_WIDTH = 464  # the card is 512 px wide, text starts at 24 px


def wrap(draw, text: str, font, width: int = TEXT_WIDTH) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels in ``font`` (words are never split)."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        if line and draw.textlength(f"{line} {word}", font=font) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def card_fonts():
    """(title, subtitle, small) fonts of the cards (DejaVu where installed, Pillow's default otherwise)."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf", 34), ImageFont.truetype("DejaVuSans.ttf", 22), ImageFont.truetype("DejaVuSans.ttf", 16)
    except OSError:
        default = ImageFont.load_default()
        return default, default, default


def thumbnail(path: Path, title: str, variant: str, graph) -> None:
    """A 512x512 descriptive card (JPEG): title, variant, output size and the node chain."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (512, 512), (24, 32, 28))
    d = ImageDraw.Draw(img)
    big, mid, small = card_fonts()
    accent = (120, 200, 120) if variant == "ternary" else (120, 170, 230)
    d.rectangle((0, 0, 512, 10), fill=accent)
    # A stylised bonsai: pot, trunk, three canopy discs.
    d.rectangle((206, 420, 306, 470), fill=(120, 80, 60))
    d.polygon([(250, 420), (262, 420), (268, 330), (244, 330)], fill=(90, 60, 40))
    for cx, cy, r in ((256, 300, 60), (196, 330, 40), (316, 330, 40)):
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=accent)
    d.text((24, 28), "Bonsai Image 4B", font=big, fill=(235, 235, 235))
    y = 76
    for line in wrap(d, title, mid):  # a long title ("... (tiled VAE decode)") wraps instead of running off the card
        d.text((24, y), line, font=mid, fill=accent)
        y += 28
    types = [n.type for n in graph.nodes]
    chain = " > ".join(dict.fromkeys(t for t in types if t not in ("KSamplerSelect", "RandomNoise", "ConditioningZeroOut")))
    y += 16
    for line in wrap(d, chain, small):
        d.text((24, y), line, font=small, fill=(190, 190, 190))
        y += 22
    tmp = path.with_suffix(".jpg.partial")
    img.save(tmp, "JPEG", quality=88)
    os.replace(tmp, path)

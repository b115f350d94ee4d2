"""Render the small sample clip ``examples/data/bouncing_box.mp4`` (a coloured box that moves,
grows and turns over a plain grey background), so the README command has an input.

    python examples/make_sample_video.py [--out examples/data/bouncing_box.mp4]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from PIL import Image, ImageDraw


def render(i: int, n: int, size: int) -> np.ndarray:
    img = Image.new("RGB", (size, size), (205, 205, 205))
    draw = ImageDraw.Draw(img)
    phase = i / max(n - 1, 1)
    cx = size * (0.35 + 0.3 * phase)
    cy = size * (0.5 - 0.15 * math.sin(math.pi * phase))
    half = size * (0.14 + 0.05 * phase)
    angle = math.pi / 6 * phase
    corners = [(cx + half * math.cos(angle + k * math.pi / 2) * math.sqrt(2),
                cy + half * math.sin(angle + k * math.pi / 2) * math.sqrt(2)) for k in range(4)]
    draw.polygon(corners, fill=(200, 60, 40))
    draw.ellipse([cx - half * 0.5, cy - half * 0.5, cx + half * 0.5, cy + half * 0.5], fill=(40, 90, 190))
    return np.asarray(img)


def main() -> None:
    from sdk.outputs.video import write_video

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/data/bouncing_box.mp4")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    write_video([render(i, args.frames, args.size) for i in range(args.frames)], args.out, fps=12)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

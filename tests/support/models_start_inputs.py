"""Input images of the start-latent workflows (cvd_image_to_multiview, cvd_video_to_views), drawn by code into the
test ComfyUI's input folder: a 64x64 start image and a 16-frame 64x64 animated PNG (LoadImage loads every frame)."""

from __future__ import annotations

from pathlib import Path

START_IMAGE = "cvd_start_image.png"
VIDEO_16F = "cvd_video_16f.png"
SIZE, VIDEO_FRAMES = 64, 16


def _frame(shift: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for y in range(SIZE):  # sky to ground
        draw.line([(0, y), (SIZE, y)], fill=(40 + 2 * y, 90 + y, 200 - 2 * y))
    draw.rectangle([8 + shift, 30, 28 + shift, 52], fill=(220, 40, 40))
    draw.ellipse([38, 10 + shift // 2, 56, 28 + shift // 2], fill=(250, 220, 60))
    return image


def install(comfy_root: Path) -> None:
    folder = Path(comfy_root) / "input"
    folder.mkdir(parents=True, exist_ok=True)
    _frame(0).save(folder / START_IMAGE)
    frames = [_frame(shift) for shift in range(VIDEO_FRAMES)]
    frames[0].save(folder / VIDEO_16F, save_all=True, append_images=frames[1:], duration=125, loop=0)

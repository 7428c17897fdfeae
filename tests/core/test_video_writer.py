"""Multi-view video writing: decode-back checks with PyAV, metadata, atomicity, grid tiling."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

av = pytest.importorskip("av")

from cvd_core.io import (frames_from_image_batch, grid_layout, make_grid_frames, quality_to_crf, read_video_metadata,
                         to_uint8, write_multiview)
from cvd_core.io.grid import GridComposer
from cvd_core.progress import CallbackProgress

VIEWS, STEPS, HEIGHT, WIDTH = 2, 5, 48, 64
METADATA = {"prompt": json.dumps({"3": {"inputs": {"text": "café ☕ \"quoted\""}}}),
            "workflow": json.dumps({"nodes": [{"id": 1, "type": "CVD_SaveMultiViewVideo"}]})}


def smooth_views(views=VIEWS, steps=STEPS, height=HEIGHT, width=WIDTH) -> np.ndarray:
    """Smooth moving content per view (what a lossy codec at high quality reproduces closely)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.zeros((views, steps, height, width, 3), np.float32)
    for v in range(views):
        for t in range(steps):
            cx, cy = width * (0.3 + 0.1 * t), height * (0.4 + 0.1 * v)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (width / 6) ** 2))
            out[v, t, ..., 0] = xx / width
            out[v, t, ..., 1] = 0.2 + 0.6 * blob
            out[v, t, ..., 2] = 0.3 + 0.4 * (v % 2) * yy / height
    return out


def decode(path: str) -> tuple[np.ndarray, object]:
    """All frames of a video file as uint8 RGB and its first video stream's info."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.average_rate, stream.codec_context.pix_fmt)
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    return frames, info


def stems(prefix="cvd_00001_"):
    return lambda key: f"{prefix}{'grid' if key == 'grid' else f'v{key}'}"


def mean_abs_error(decoded: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(decoded.astype(np.float32) - to_uint8(expected).astype(np.float32)).mean() / 255.0)


@pytest.mark.parametrize("fmt, codec, max_error", [("mp4", "h264", 0.02), ("webm", "vp9", 0.03)])
def test_video_roundtrip_views_and_grid(tmp_path, fmt, codec, max_error):
    frames = smooth_views()
    results = write_multiview(frames, str(tmp_path), stems(), fps=8, format=fmt, quality=90,
                              labels=["left", "right"], metadata=METADATA)
    assert [r["view"] for r in results] == [0, 1, "grid"]
    assert sorted(os.listdir(tmp_path)) == sorted(f"cvd_00001_{k}.{fmt}" for k in ("v0", "v1", "grid"))
    for view in range(VIEWS):
        result = results[view]
        assert result["frames"] == STEPS and (result["width"], result["height"]) == (WIDTH, HEIGHT)
        assert result["fps"] == 8.0 and not result["padded"] and os.path.isabs(result["path"])
        decoded, (name, rate, pix_fmt) = decode(result["path"])
        assert decoded.shape == (STEPS, HEIGHT, WIDTH, 3)
        assert name == codec and rate == 8 and pix_fmt == "yuv420p"
        assert mean_abs_error(decoded, frames[view]) < max_error
    grid, _ = decode(results[-1]["path"])
    assert grid.shape == (STEPS, HEIGHT, 2 * WIDTH, 3)  # two views side by side
    # Below the label the grid tiles are the views themselves.
    assert mean_abs_error(grid[:, HEIGHT // 2:, WIDTH:], frames[1, :, HEIGHT // 2:]) < max_error
    for result in results:
        tags = read_video_metadata(result["path"])
        assert tags["prompt"] == METADATA["prompt"] and tags["workflow"] == METADATA["workflow"]


def test_png_frames_are_lossless_and_carry_metadata(tmp_path):
    frames = smooth_views(views=3, steps=3)
    results = write_multiview(frames, str(tmp_path), stems(), format="png", metadata=METADATA, write_grid=False)
    assert [r["view"] for r in results] == [0, 1, 2]
    for view, result in enumerate(results):
        assert os.path.isdir(result["path"])
        names = sorted(os.listdir(result["path"]))
        assert names == [f"frame_{t:05d}.png" for t in range(3)]
        from PIL import Image

        for t, name in enumerate(names):
            with Image.open(os.path.join(result["path"], name)) as image:
                assert np.array_equal(np.asarray(image), to_uint8(frames[view, t]))
        assert read_video_metadata(result["path"]) == METADATA


def test_no_metadata_means_no_custom_tags(tmp_path):
    result = write_multiview(smooth_views(views=1, steps=2), str(tmp_path), stems(), metadata=None, write_grid=False)[0]
    tags = read_video_metadata(result["path"])
    assert "prompt" not in tags and "workflow" not in tags


def test_odd_size_is_padded_to_even_for_yuv420(tmp_path):
    # 8-pixel blocks: padding keeps them in place, any rescaling to the even size would smear the edges.
    yy, xx = np.mgrid[0:47, 0:63]
    blocks = ((yy // 8 + xx // 8) % 2).astype(np.float32)[..., None] * np.array([0.8, 0.6, 0.3], np.float32) + 0.1
    frames = np.broadcast_to(blocks, (1, 3, 47, 63, 3)).copy()
    result = write_multiview(frames, str(tmp_path), stems(), format="mp4", quality=95, write_grid=False)[0]
    assert (result["width"], result["height"], result["padded"]) == (64, 48, True)
    decoded, _ = decode(result["path"])
    assert decoded.shape == (3, 48, 64, 3)
    assert mean_abs_error(decoded[:, :47, :63], frames[0]) < 0.02
    # The added column/row repeat the last ones.
    assert np.abs(decoded[:, :, 63].astype(int) - decoded[:, :, 62]).mean() < 4
    assert np.abs(decoded[:, 47].astype(int) - decoded[:, 46]).mean() < 4
    png = write_multiview(frames, str(tmp_path), stems("png_"), format="png", write_grid=False)[0]
    assert (png["width"], png["height"], png["padded"]) == (63, 47, False)


def test_torch_half_input_and_progress_counts(tmp_path):
    torch = pytest.importorskip("torch")
    frames = torch.from_numpy(smooth_views(steps=3)).to(torch.bfloat16)
    updates = []
    progress = CallbackProgress(lambda done, total: updates.append((done, total)))
    results = write_multiview(frames, str(tmp_path), stems(), format="mp4", progress=progress)
    assert len(results) == 3
    assert progress.total == 3 * 3 and progress.done == progress.total  # one unit per encoded frame


class CancelAfter:
    """Progress that raises like ComfyUI's interrupt after ``limit`` frames."""

    def __init__(self, limit):
        self.limit, self.done = limit, 0

    def start(self, total):
        pass

    def advance(self, n=1):
        self.done += n
        if self.done >= self.limit:
            raise KeyboardInterrupt("processing interrupted")

    def check(self):
        pass


@pytest.mark.parametrize("fmt", ["mp4", "webm", "png"])
def test_cancel_mid_write_leaves_no_file(tmp_path, fmt):
    (tmp_path / "earlier_output.mp4").write_bytes(b"keep me")
    # Cancel in the second view, after view 0 was completely encoded.
    with pytest.raises(KeyboardInterrupt):
        write_multiview(smooth_views(), str(tmp_path), stems(), format=fmt, progress=CancelAfter(STEPS + 2))
    assert os.listdir(tmp_path) == ["earlier_output.mp4"]
    assert (tmp_path / "earlier_output.mp4").read_bytes() == b"keep me"


def test_failure_in_grid_removes_finished_views(tmp_path, monkeypatch):
    def broken(self, views_at_t):
        raise RuntimeError("grid failed")

    monkeypatch.setattr(GridComposer, "compose", broken)
    with pytest.raises(RuntimeError, match="grid failed"):
        write_multiview(smooth_views(), str(tmp_path), stems(), format="mp4")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["mp4", "png"])
def test_existing_outputs_need_overwrite(tmp_path, fmt):
    first = write_multiview(smooth_views(steps=2), str(tmp_path), stems(), format=fmt, write_grid=False)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_multiview(smooth_views(steps=3), str(tmp_path), stems(), format=fmt, write_grid=False)
    assert sorted(os.listdir(tmp_path)) == before
    again = write_multiview(smooth_views(steps=3), str(tmp_path), stems(), format=fmt, write_grid=False, overwrite=True)
    assert [r["path"] for r in again] == [r["path"] for r in first]
    assert sorted(os.listdir(tmp_path)) == before  # replaced in place, no temporaries left
    if fmt == "png":
        assert len(os.listdir(again[0]["path"])) == 3
    else:
        assert decode(again[0]["path"])[0].shape[0] == 3


def test_quality_knob(tmp_path):
    assert [quality_to_crf(q, "mp4") for q in (0, 80, 100)] == [51, 10, 1]  # never lossless crf 0
    assert [quality_to_crf(q, "webm") for q in (0, 80, 100)] == [63, 13, 0]
    noisy = np.random.default_rng(0).random((1, 4, 64, 64, 3), dtype=np.float32)
    low = write_multiview(noisy, str(tmp_path), stems("low_"), quality=10, write_grid=False)[0]
    high = write_multiview(noisy, str(tmp_path), stems("high_"), quality=95, write_grid=False)[0]
    assert os.path.getsize(low["path"]) < os.path.getsize(high["path"]) / 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(frames=np.zeros((5, 8, 8, 3))), r"\[views, frames, height, width, 3\]"),
    (dict(frames=np.zeros((1, 2, 8, 8, 4))), "3 colour channels"),
    (dict(frames=np.zeros((1, 0, 8, 8, 3))), "at least one"),
    (dict(format="gif"), "format must be one of mp4, webm, png"),
    (dict(quality=150), "quality must be"),
    (dict(fps=0), "fps must be"),
    (dict(stem_for=lambda k: f"sub/{k}"), "without folders"),
    (dict(stem_for=lambda k: ".hidden"), "not starting with"),
    (dict(stem_for=lambda k: "same"), "stems must differ"),
    (dict(metadata={"prompt": {"not": "a string"}}), "json.dumps"),
    (dict(labels=["only one"]), "one entry per view"),
])
def test_clear_errors(tmp_path, kwargs, message):
    args = dict(frames=smooth_views(steps=1), out_dir=str(tmp_path), stem_for=stems())
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        write_multiview(**args)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("views, layout", [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3))])
def test_grid_tiles_views_with_labels(views, layout):
    assert grid_layout(views) == layout
    frames = smooth_views(views=views, steps=2, height=40, width=56)
    frames[:, :, :20] = 0.85  # bright band under the labels so that a dark label box is visible
    labels = [f"cam{v}" for v in range(views)]
    grid = make_grid_frames(frames, labels=labels)
    rows, cols = layout
    assert grid.shape == (2, rows * 40, cols * 56, 3) and grid.dtype == np.uint8
    unlabelled = make_grid_frames(frames)
    for v in range(views):
        y, x = (v // cols) * 40, (v % cols) * 56
        tile = grid[:, y:y + 40, x:x + 56]
        assert np.array_equal(tile[:, 20:], to_uint8(frames[v, :, 20:]))  # below the label: the view itself
        assert np.abs(tile[:, :8, :24].astype(int) - to_uint8(frames[v, :, :8, :24])).mean() > 20  # label drawn
        assert not np.array_equal(tile[:, :12], unlabelled[:, y:y + 12, x:x + 56])  # label text differs
    for empty in range(views, rows * cols):  # unused cells stay black
        y, x = (empty // cols) * 40, (empty % cols) * 56
        assert grid[:, y:y + 40, x:x + 56].max() == 0


def test_frames_from_image_batch_is_view_major():
    images = np.arange(6)[:, None, None, None] * np.ones((6, 2, 2, 3))
    split = frames_from_image_batch(images, views=2)
    assert split.shape == (2, 3, 2, 2, 3)
    assert split[1, 0, 0, 0, 0] == 3  # view 1 starts at batch index T = 3
    with pytest.raises(ValueError, match="multiple of views"):
        frames_from_image_batch(images, views=4)

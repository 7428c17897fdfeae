"""Writing multi-view videos (one file per view plus a labelled grid) with PyAV.

Formats
    ``mp4``  H.264 (libx264), yuv420p, BT.709 tagged, ``+faststart`` so browsers can stream it.
    ``webm`` VP9 (libvpx-vp9), yuv420p, constant-quality mode.
    ``png``  one folder per view holding ``frame_00000.png`` ... (lossless, 8-bit RGB).

Quality is a 0..100 knob, higher is better, the same for both video codecs:
``crf = round((100 - quality) * max_crf / 100)`` with ``max_crf`` 51 for H.264 and 63 for VP9.
H.264 never goes below crf 1, because crf 0 switches x264 to its lossless High 4:4:4 profile that
browsers cannot play. PNG ignores ``quality`` (always lossless).

Odd sizes: yuv420p stores colour at half resolution, so H.264/VP9 need even width and height. An odd
width or height is padded by repeating the last column/row once (never cropped, never an error);
the result reports the encoded size and ``padded: True``. PNG keeps the exact size.

Metadata (``dict[str, str]``, e.g. ``{"prompt": json, "workflow": json}``) goes into the container
tags (mp4 with ``movflags=use_metadata_tags`` so custom keys survive; Matroska/WebM tags natively)
and into PNG text chunks of every frame, as ComfyUI's own savers do. :func:`read_video_metadata`
reads it back with lower-case keys.

Atomicity: everything is written under hidden temporary names in ``out_dir`` and renamed only when
all outputs are complete (see :mod:`cvd_core.io.staging`); an exception or a cancel raised from
``progress.advance`` leaves no file behind.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ..progress import Progress, ensure_progress
from .staging import StagedOutputs
from .frames import check_multiview_frames, to_uint8
from .grid import GridComposer

FORMATS = ("mp4", "webm", "png")
_EXTENSIONS = {"mp4": ".mp4", "webm": ".webm", "png": ""}  # png: a folder named by the stem
_CODECS = {"mp4": ("libx264", 51, 1), "webm": ("libvpx-vp9", 63, 0)}  # codec, max crf, min crf

ViewKey = Union[int, str]


def quality_to_crf(quality: float, format: str) -> int:
    """Map the 0..100 quality knob (higher is better) to the codec's crf for ``mp4`` or ``webm``."""
    if format not in _CODECS:
        raise ValueError(f"quality_to_crf is defined for mp4 and webm, got {format!r}")
    _, max_crf, min_crf = _CODECS[format]
    return int(max(min_crf, min(max_crf, round((100.0 - float(quality)) * max_crf / 100.0))))


def _check_fps(fps: float) -> Fraction:
    """Frame rate as an exact fraction (NTSC-style 29.97 stays 2997/100)."""
    try:
        rate = Fraction(str(fps)).limit_denominator(1001)
    except (TypeError, ValueError) as error:
        raise ValueError(f"fps must be a number, got {fps!r}") from error
    if not 0 < rate <= 1000:
        raise ValueError(f"fps must be in (0, 1000], got {fps}")
    return rate


def _check_quality(quality: float) -> float:
    if not isinstance(quality, (int, float)) or not 0 <= quality <= 100:
        raise ValueError(f"quality must be a number from 0 (smallest file) to 100 (best), got {quality!r}")
    return float(quality)


def _check_metadata(metadata: Optional[Mapping[str, str]]) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict of str to str, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise ValueError(
                f"metadata must map non-empty str keys to str values (json.dumps objects first), "
                f"got {key!r}: {type(value).__name__}")
        if "=" in key or "\x00" in key or "\x00" in value:
            raise ValueError(f"metadata key {key!r} may not contain '=' or NUL characters")
    return dict(metadata)


def _check_stem(stem: Any, key: ViewKey) -> str:
    """A stem must be a plain file name so that outputs cannot escape ``out_dir``."""
    if not isinstance(stem, str) or not stem or stem in (".", "..") or stem.startswith("."):
        raise ValueError(f"stem_for({key!r}) must return a non-empty file name not starting with '.', got {stem!r}")
    if "/" in stem or "\\" in stem or os.sep in stem or "\x00" in stem:
        raise ValueError(f"stem_for({key!r}) must return a file name without folders, got {stem!r}")
    return stem


def _output_names(views: int, write_grid: bool, stem_for: Callable[[ViewKey], str],
                  format: str) -> list[tuple[ViewKey, str]]:
    keys: list[ViewKey] = list(range(views)) + (["grid"] if write_grid else [])
    names = [(key, _check_stem(stem_for(key), key) + _EXTENSIONS[format]) for key in keys]
    seen: dict[str, ViewKey] = {}
    for key, name in names:
        if name in seen:
            raise ValueError(f"stem_for gives the same name {name!r} for {seen[name]!r} and {key!r}; stems must differ")
        seen[name] = key
    return names


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    pad_rows, pad_cols = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_rows or pad_cols:
        return np.pad(frame, ((0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")
    return frame


class _VideoSink:
    """Streams uint8 RGB frames into one H.264 or VP9 file."""

    def __init__(self, path: str, format: str, width: int, height: int, rate: Fraction, crf: int,
                 metadata: dict[str, str]):
        import av  # imported here so that the rest of cvd_core works without PyAV installed

        self._av = av
        self.width = width + width % 2
        self.height = height + height % 2
        codec, _, _ = _CODECS[format]
        container_options = {"movflags": "use_metadata_tags+faststart"} if format == "mp4" else {}
        if format == "mp4":
            codec_options = {"crf": str(crf), "preset": "medium"}
        else:
            # b=0 selects VP9's constant-quality mode; cpu-used 4 / row-mt keep encoding fast.
            codec_options = {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
        self._container = av.open(path, mode="w", format=format, options=container_options)
        try:
            for key, value in metadata.items():
                self._container.metadata[key] = value
            self._stream = self._container.add_stream(codec, rate=rate, options=codec_options)
            self._stream.width = self.width
            self._stream.height = self.height
            self._stream.pix_fmt = "yuv420p"
            self._bt709 = self._tag_bt709()
        except BaseException:
            self.abort()
            raise
        self.frames = 0

    def _tag_bt709(self) -> bool:
        """Tag the stream as BT.709 limited range (what players assume for web video); False on old PyAV."""
        context = self._stream.codec_context
        try:
            context.colorspace = 1  # AVCOL_SPC_BT709
            context.color_primaries = 1
            context.color_trc = 1
            context.color_range = 1  # MPEG / limited
            return True
        except (AttributeError, TypeError, ValueError):
            return False

    def write(self, frame: np.ndarray) -> None:
        video_frame = self._av.VideoFrame.from_ndarray(_pad_to_even(frame), format="rgb24")
        if self._bt709:
            # Convert with the same matrix the stream is tagged with, or colours shift on playback.
            video_frame = video_frame.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range=1)
        video_frame.pts = self.frames
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode():  # flush delayed frames
            self._container.mux(packet)
        self._container.close()

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # the file is deleted next; a half-written container may refuse to close cleanly
            pass


class _PngSink:
    """Writes uint8 RGB frames as numbered PNGs into one folder, metadata in text chunks."""

    def __init__(self, folder: str, width: int, height: int, metadata: dict[str, str]):
        from PIL.PngImagePlugin import PngInfo

        self.folder = folder
        self.width, self.height = width, height
        self._info = PngInfo()
        for key, value in metadata.items():
            self._info.add_text(key, value)
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        from PIL import Image

        path = os.path.join(self.folder, f"frame_{self.frames:05d}.png")
        Image.fromarray(frame, mode="RGB").save(path, pnginfo=self._info, compress_level=4)
        self.frames += 1

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _open_sink(path: str, format: str, width: int, height: int, rate: Fraction, quality: float,
               metadata: dict[str, str]):
    if format == "png":
        return _PngSink(path, width, height, metadata)
    return _VideoSink(path, format, width, height, rate, quality_to_crf(quality, format), metadata)


def _encode(sink, frames_uint8: Callable[[int], np.ndarray], count: int, progress: Progress) -> None:
    """Feed ``count`` frames into ``sink``; the sink is aborted on any error (including a cancel)."""
    try:
        for index in range(count):
            sink.write(frames_uint8(index))
            progress.advance(1)
        sink.close()
    except BaseException:
        sink.abort()
        raise


def _write_staged(staged: StagedOutputs, array: np.ndarray, names, grid, format: str, rate: Fraction,
                  quality: float, tags: dict, progress: Progress) -> list[dict]:
    """Encode every output into ``staged`` (not committed); the result dicts name the final paths."""
    steps, height, width = array.shape[1:4]
    for name in (name for _, name in names):
        staged.check_free(name)  # fail before any encoding work
    results = []
    for key, name in names:
        progress.check()
        temporary = staged.stage(name, folder=(format == "png"))
        if key == "grid":
            out_height, out_width = grid.height, grid.width
            source = lambda t: grid.compose(to_uint8(array[:, t]))  # noqa: E731
        else:
            out_height, out_width = height, width
            source = lambda t, v=key: to_uint8(array[v, t])  # noqa: E731
        sink = _open_sink(temporary, format, out_width, out_height, rate, quality, tags)
        _encode(sink, source, steps, progress)
        results.append({
            "view": key,
            "path": staged.final_path(name),
            "filename": name,
            "format": format,
            "frames": steps,
            "width": sink.width,
            "height": sink.height,
            "fps": float(rate),
            "padded": (sink.width, sink.height) != (out_width, out_height),
        })
    return results


def write_multiview(
    frames: Any,
    out_dir: str,
    stem_for: Callable[[ViewKey], str],
    fps: float = 8,
    format: str = "mp4",
    quality: float = 80,
    labels: Optional[Sequence[str]] = None,
    metadata: Optional[Mapping[str, str]] = None,
    write_grid: bool = True,
    progress: Optional[Progress] = None,
    overwrite: bool = False,
    staged: Optional[StagedOutputs] = None,
) -> list[dict]:
    """Write one video per view (and a labelled grid video) and return what was written.

    Args:
        frames: ``[V, T, H, W, 3]`` float in 0..1 (clipped) or uint8; torch tensor or numpy array.
        out_dir: folder for the outputs (created if missing).
        stem_for: file name without extension for view index ``v`` and for ``"grid"``; a plain
            name (no folders, no leading dot), different for every output.
        fps: frames per second (> 0).
        format: ``"mp4"`` (H.264), ``"webm"`` (VP9) or ``"png"`` (a folder of frames per output).
        quality: 0..100, higher is better (see the module docstring for the crf mapping).
        labels: optional text per view shown on the grid tiles ("view i: label").
        metadata: ``str -> str`` tags stored in every output (``None``: none).
        write_grid: also write the tiled grid video.
        progress: advanced once per encoded frame; raising from it cancels and removes everything.
        overwrite: replace existing outputs of the same name instead of raising ``FileExistsError``.
        staged: stage the outputs into this open :class:`StagedOutputs` of ``out_dir`` and leave the
            commit to its owner (so that other files, such as a poster, join the same commit);
            ``None``: a commit of their own before returning.

    Returns:
        One dict per output, views first then the grid: ``view`` (int or ``"grid"``), ``path``
        (absolute; a folder for png), ``filename``, ``format``, ``frames``, ``width``, ``height``
        (encoded size), ``fps`` (float), ``padded`` (odd size padded to even).
    """
    array = check_multiview_frames(frames)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    rate = _check_fps(fps)
    quality = _check_quality(quality)
    tags = _check_metadata(metadata)
    views, steps, height, width, _ = array.shape
    if labels is not None and len(labels) != views:
        raise ValueError(f"labels must have one entry per view ({views}), got {len(labels)}")
    names = _output_names(views, write_grid, stem_for, format)
    grid = GridComposer(views, height, width, labels) if write_grid else None

    progress = ensure_progress(progress)
    progress.start(len(names) * steps)
    os.makedirs(out_dir, exist_ok=True)
    if staged is not None:
        if os.path.abspath(out_dir) != staged.out_dir:
            raise ValueError(f"staged stages into {staged.out_dir}, not into out_dir {out_dir}")
        return _write_staged(staged, array, names, grid, format, rate, quality, tags, progress)
    with StagedOutputs(out_dir, overwrite=overwrite) as own:
        results = _write_staged(own, array, names, grid, format, rate, quality, tags, progress)
        own.commit()
    return results


def read_video_metadata(path: str) -> dict[str, str]:
    """Container tags of a written mp4/webm, or the PNG text of a png output folder's first frame.

    Keys are lower-cased (Matroska stores tag names in upper case).
    """
    if os.path.isdir(path):
        pngs = sorted(name for name in os.listdir(path) if name.endswith(".png"))
        if not pngs:
            raise ValueError(f"{path} holds no PNG frames")
        path = os.path.join(path, pngs[0])
    if path.lower().endswith(".png"):
        from PIL import Image

        with Image.open(path) as image:
            return {str(key).lower(): str(value) for key, value in getattr(image, "text", {}).items()}
    import av

    with av.open(path) as container:
        return {str(key).lower(): str(value) for key, value in container.metadata.items()}

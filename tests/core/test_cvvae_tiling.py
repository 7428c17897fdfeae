"""Tiling/chunking of CV-VAE encode/decode: shapes over a grid, exactness of blending, official
mode validation, auto-mode OOM retry, progress and cancellation.

Most tests use a *local* fake VAE (8x8 pooling / nearest upsampling, latent frame k = pixel
frame 4k, linear interpolation in time): any correct tiler reproduces its untiled output
exactly, so placement or blending mistakes show up as value errors, not only shape errors.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cvd_core.cvvae import TilingConfig, decode_video, encode_video, load_cvvae, write_tiny_cvvae
from cvd_core.cvvae.tiling import auto_plan, blend_weights, shrink_plan, tile_spans, time_windows, TilePlan
from cvd_core.progress import CallbackProgress

ROOT = Path(__file__).resolve().parents[2]


class FakeVAE(torch.nn.Module):
    """Shape-faithful, spatially and temporally local stand-in for a CV-VAE."""

    in_channels = 3
    latent_channels = 4
    encoder_full_res_channels = 128
    decoder_full_res_channels = 256

    def __init__(self, config=None):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = dict(en_de_n_frames_a_time=16, tile_spatial_size=576, tile_overlap_ratio=0.2222)
        self.config.update(config or {})
        self.calls = []

    @property
    def device(self):
        return self.anchor.device

    @property
    def dtype(self):
        return self.anchor.dtype

    def encode_tile(self, x):
        self.calls.append(("encode", tuple(x.shape)))
        pooled = F.avg_pool3d(x[:, :, ::4], kernel_size=(1, 8, 8))
        return torch.cat([pooled, pooled.mean(1, keepdim=True), pooled ** 2, pooled[:, :1] * 0.5], dim=1)

    def decode_tile(self, z):
        self.calls.append(("decode", tuple(z.shape)))
        frames = [z[:, :3, 0]]
        for k in range(1, z.shape[2]):
            for s in (1, 2, 3, 4):
                frames.append(z[:, :3, k - 1] * (1 - s / 4) + z[:, :3, k] * (s / 4))
        video = torch.stack(frames, dim=2)
        return F.interpolate(video, scale_factor=(1, 8, 8), mode="nearest")


def _pixels(frames, h, w, seed=0):
    return torch.rand(1, 3, frames, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


GRID_SIZES = [(8, 8), (24, 40), (56, 32), (72, 72)]
GRID_TILINGS = [
    TilingConfig("manual", tile_size=16, tile_overlap=0.0),
    TilingConfig("manual", tile_size=24, tile_overlap=0.25, temporal_chunk=4),
    TilingConfig("manual", tile_size=32, tile_overlap=0.5, temporal_chunk=8),
    TilingConfig("manual", tile_size=40, tile_overlap=0.3),
    TilingConfig("manual", temporal_chunk=12),
    TilingConfig("auto", tile_size=16, temporal_chunk=4),
]


@pytest.mark.parametrize("size", GRID_SIZES, ids=[f"{h}x{w}" for h, w in GRID_SIZES])
@pytest.mark.parametrize("frames", [1, 5, 13, 17])
def test_grid_shapes_and_values_match_untiled(size, frames):
    model = FakeVAE()
    x = _pixels(frames, *size)
    ref = encode_video(model, x, TilingConfig("none")).moments
    ref_rec = decode_video(model, ref[:, :4], TilingConfig("none"))
    assert ref.shape == (1, 8, 1 + (frames - 1) // 4, size[0] // 8, size[1] // 8)
    assert ref_rec.shape == (1, 3, frames, *size)
    for tiling in GRID_TILINGS:
        got = encode_video(model, x, tiling).moments
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6, msg=lambda m: f"{tiling}: {m}")
        rec = decode_video(model, ref[:, :4], tiling)
        torch.testing.assert_close(rec, ref_rec, atol=1e-6, rtol=1e-6, msg=lambda m: f"{tiling}: {m}")


def test_tiles_are_full_size_and_cover_everything():
    for size in range(1, 40):
        for tile in (2, 3, 5, 9):
            for overlap in range(0, tile // 2 + 1):
                spans = tile_spans(size, tile, overlap)
                assert spans[0][0] == 0 and spans[-1][1] == size
                assert all(e - s == min(tile, size) for s, e in spans)
                assert all(b[0] <= a[1] for a, b in zip(spans, spans[1:]))  # no gaps
                weights = blend_weights(spans, 8, torch.float64, "cpu")
                total = torch.zeros(size * 8, dtype=torch.float64)
                for (s, e), w in zip(spans, weights):
                    total[s * 8:e * 8] += w
                torch.testing.assert_close(total, torch.ones_like(total))


def test_time_windows_share_boundary_frames():
    assert time_windows(25, 8) == [(0, 9, False), (8, 17, True), (16, 25, True)]
    assert time_windows(17, 16) == [(0, 17, False)]
    assert time_windows(7, 2) == [(0, 3, False), (2, 5, True), (4, 7, True)]
    assert time_windows(1, 4) == [(0, 1, False)]


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="manual", tile_size=20), r"tile_size must be a multiple of 8 pixels and at least 16, got 20: use 16 or 24"),
    (dict(mode="manual", tile_size=8), r"at least 16, got 8"),
    (dict(mode="manual", temporal_chunk=6), r"temporal_chunk must be a multiple of 4 frames .* got 6: use 4 or 8"),
    (dict(mode="manual", tile_overlap=0.7), r"tile_overlap must be a fraction between 0 and 0.5"),
    (dict(mode="fast"), r"tiling mode must be one of"),
    (dict(mode="official", tile_size=64), r"only used by modes 'manual' and 'auto'"),
    (dict(mode="manual", tile_size=32.5), r"whole number"),
])
def test_bad_knobs_are_rejected_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TilingConfig(**kwargs)


def test_official_mode_rejects_strides_that_shrink_the_output():
    model = FakeVAE(dict(tile_spatial_size=32, tile_overlap_ratio=0.2222))  # upstream: 64 px in, 57 px out
    with pytest.raises(ValueError, match="not 8x its latent stride"):
        encode_video(model, _pixels(1, 64, 64), TilingConfig("official"))


def test_official_mode_tiles_and_chunks_like_upstream():
    model = FakeVAE(dict(en_de_n_frames_a_time=8, tile_spatial_size=72))
    post = encode_video(model, _pixels(25, 128, 128), TilingConfig("official"))
    assert post.moments.shape == (1, 8, 7, 16, 16)
    encode_calls = [shape for kind, shape in model.calls if kind == "encode"]
    assert len(encode_calls) == 12 and encode_calls[0] == (1, 3, 9, 72, 72)
    model.calls.clear()
    assert decode_video(model, post.mode(), TilingConfig("official")).shape == (1, 3, 25, 128, 128)
    assert [s for _, s in model.calls][0] == (1, 4, 3, 9, 9) and len(model.calls) == 12


# ---------------------------------------------------------------- auto mode


def test_auto_plan_shrinks_with_budget():
    model = FakeVAE()
    shape = (1, 4, 9, 64, 64)  # latents of a 512x512, 33-frame video
    whole = auto_plan(model, shape, "decode", TilingConfig("auto"), budget=1 << 50)
    assert whole.latent_tile == 64 and whole.chunk_latent == 4
    small = auto_plan(model, shape, "decode", TilingConfig("auto"), budget=1 << 30)
    assert small.latent_tile < 64 and small.latent_tile >= 8
    assert shrink_plan(TilePlan(8, 2, 1)) is None
    assert shrink_plan(TilePlan(8, 2, 4)) == TilePlan(8, 2, 2)


class OOMFakeVAE(FakeVAE):
    """Raises out-of-memory for tiles larger than ``limit`` latent px, after allocating scratch."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.scratch_refs = []
        self.leaked_at_retry = []
        self.attempts = []

    def decode_tile(self, z):
        self.leaked_at_retry.extend(r() is not None for r in self.scratch_refs)
        self.attempts.append(tuple(z.shape[3:]))
        if max(z.shape[3:]) > self.limit:
            scratch = torch.empty(1 << 16)
            self.scratch_refs.append(weakref.ref(scratch))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return super().decode_tile(z)


def test_auto_retries_smaller_tiles_after_oom_and_frees_failed_attempt(monkeypatch):
    # Pretend plenty is free, so the first attempt is the whole frame and only the OOM shrinks it.
    monkeypatch.setattr("cvd_core.cvvae.tiling.free_memory_bytes", lambda device: 1 << 50)
    model = OOMFakeVAE(limit=12)
    z = torch.randn(1, 4, 3, 40, 24)
    ref = decode_video(FakeVAE(), z, TilingConfig("none"))
    events = []
    got = decode_video(model, z, TilingConfig("auto"), progress=CallbackProgress(lambda d, t: events.append((d, t))))
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    assert model.attempts[:2] == [(40, 24), (20, 20)]  # whole frame, then halved tiles
    assert all(max(s) <= 12 for s in model.attempts[2:])
    assert model.scratch_refs and not any(model.leaked_at_retry)
    assert events[-1][0] == events[-1][1]  # the successful attempt restarted progress and finished it


def test_auto_gives_up_with_a_clear_memory_error():
    model = OOMFakeVAE(limit=0)
    with pytest.raises(MemoryError, match="ran out of memory even with 64 px tiles"):
        decode_video(model, torch.randn(1, 4, 2, 16, 16), TilingConfig("auto"))


def test_non_oom_errors_are_not_retried():
    model = FakeVAE()
    model.decode_tile = lambda z: (_ for _ in ()).throw(RuntimeError("shape bug"))
    with pytest.raises(RuntimeError, match="shape bug"):
        decode_video(model, torch.randn(1, 4, 2, 16, 16), TilingConfig("auto"))


# ---------------------------------------------------------------- progress and cancel


class Cancelled(Exception):
    pass


@pytest.mark.parametrize("tiling", [TilingConfig("manual", tile_size=16, temporal_chunk=4), TilingConfig("official"),
                                    TilingConfig("auto", tile_size=16)], ids=["manual", "official", "auto"])
def test_progress_counts_every_tile_and_cancel_propagates(tiling):
    model = FakeVAE(dict(en_de_n_frames_a_time=4, tile_spatial_size=16, tile_overlap_ratio=0.5))
    x = _pixels(9, 32, 24)
    events = []
    post = encode_video(model, x, tiling, progress=CallbackProgress(lambda d, t: events.append((d, t))))
    total = events[0][1]
    assert total > 1 and events[0][0] == 0 and events[-1] == (total, total)
    calls_per_run = len(model.calls)
    assert calls_per_run == total

    def cancel_on_second(done, total):
        if done == 2:
            raise Cancelled()

    model.calls.clear()
    result = []
    with pytest.raises(Cancelled):
        result.append(decode_video(model, post.mode(), tiling, progress=CallbackProgress(cancel_on_second)))
    assert result == [] and len(model.calls) == 2


# ---------------------------------------------------------------- with the real (tiny) network


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_cvvae(write_tiny_cvvae(tmp_path_factory.mktemp("cvvae") / "z4", "z4"), dtype="fp32")


def test_real_model_tiling_shapes_and_consistency(tiny):
    x = _pixels(5, 32, 16)
    none = encode_video(tiny, x, TilingConfig("none"))
    # Without any split, manual and auto are the same single call: bit-identical.
    same = encode_video(tiny, x, TilingConfig("manual"))
    torch.testing.assert_close(same.moments, none.moments, atol=0, rtol=0)
    auto = encode_video(tiny, x, TilingConfig("auto"))
    torch.testing.assert_close(auto.moments, none.moments, atol=0, rtol=0)
    tiled = encode_video(tiny, x, TilingConfig("manual", tile_size=16, tile_overlap=0.25, temporal_chunk=4))
    assert tiled.moments.shape == none.moments.shape == (1, 8, 2, 4, 2)
    rec = decode_video(tiny, none.mode(), TilingConfig("manual", tile_size=16, tile_overlap=0.25, temporal_chunk=4))
    assert rec.shape == (1, 3, 5, 32, 16) and torch.isfinite(rec).all()


# ---------------------------------------------------------------- frames straight into the result


DECODE_TILINGS = [TilingConfig("none"), TilingConfig("manual", tile_size=16, tile_overlap=0.25, temporal_chunk=4),
                  TilingConfig("official"), TilingConfig("auto", tile_size=16, temporal_chunk=8)]


@pytest.mark.parametrize("tiling", DECODE_TILINGS, ids=["none", "manual", "official", "auto"])
@pytest.mark.parametrize("num_frames", [None, 15])
def test_decode_frames_are_the_converted_decode_bit_for_bit(tiling, num_frames):
    from cvd_core.cvvae import decode_frames

    model = FakeVAE(dict(en_de_n_frames_a_time=4, tile_spatial_size=16, tile_overlap_ratio=0.5))
    z = torch.randn(2, 4, 5, 4, 6, generator=torch.Generator().manual_seed(3)) * 2
    video = decode_video(model, z, tiling, num_frames=num_frames)
    expected = ((video.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 4, 1)
    frames = decode_frames(model, z, tiling, num_frames=num_frames)
    assert frames.shape == (2, num_frames or 17, 32, 48, 3) and frames.dtype == torch.float32
    assert frames.is_contiguous() and torch.equal(frames, expected)


def test_decode_frames_name_view_channel_and_frame_of_a_non_finite_value():
    from cvd_core.cvvae import decode_frames
    from cvd_core.guards import NonFiniteError

    class Overflowing(FakeVAE):
        def decode_tile(self, z):
            out = super().decode_tile(z)
            if len(self.calls) == 6:  # view 1's second temporal window (pixel frames 4-12): frame 7
                out[:, 2, 3, 1, 1] = math.inf
            return out

    model = Overflowing()
    with pytest.raises(NonFiniteError, match=r"^the decoded frames must be finite, got inf at view 1, channel 2, "
                                             r"frame 7; likely causes"):
        decode_frames(model, torch.zeros(2, 4, 5, 2, 2), TilingConfig("manual", temporal_chunk=4))


def test_decode_holds_the_result_and_one_window_not_the_video(tmp_path):
    """Peak memory of decoding 4 views x 129 frames at 256x256 (406 MB of float32 frames) with the fake
    VAE, in a process of its own: before, the whole video was accumulated, converted with two temporaries
    and copied (about 3x the result); now the result plus a window's working set."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    peak_rise, result_bytes, window_bytes = (int(v) for v in out.stdout.split())
    # the result, at most 8 window-sized temporaries (accumulator, tile output, weights product, conversion;
    # measured: 5) and
    # 32 MB for the allocator's arenas
    assert peak_rise <= result_bytes + 8 * window_bytes + (32 << 20), (peak_rise, result_bytes, window_bytes)


PEAK_SCRIPT = '''
import sys
sys.path.insert(0, ".")
import torch
from cvd_core.cvvae import TilingConfig, decode_frames
from tests.core.test_cvvae_tiling import FakeVAE

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

z = torch.zeros(4, 4, 33, 32, 32)
FakeVAE().decode_tile(torch.zeros(1, 4, 2, 32, 32))  # kernels warmed up before the baseline
base = kib("VmRSS")
assert kib("VmHWM") <= base + (64 << 20)
frames = decode_frames(FakeVAE(), z, TilingConfig("manual", temporal_chunk=16))
window = 1 * 3 * 17 * 256 * 256 * 4
print(kib("VmHWM") - base, frames.numel() * 4, window)
'''

"""Run-time guards: NaN or infinity stops the sampler at its step, is refused by LoRA merges and the
feature cache settings, and never reaches a written frame."""

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from cvd_core.feature_cache import FeatureCacheConfig
from cvd_core.guards import NonFiniteError, first_non_finite, precision_hint, require_finite
from cvd_core.io import check_multiview_frames, write_multiview
from cvd_core.mcm import merge_lora_into_module
from cvd_core.sampling import DDIMScheduler, sample_multiview
from tests.core.test_sampling_sampler import MixingDenoiser, _fundamental, _inputs


class BreaksAtCall(MixingDenoiser):
    """The fake denoiser, returning NaN from its ``bad_call``-th call on (as fp16 overflow does)."""

    def __init__(self, bad_call, value=float("nan"), dtype=torch.float32):
        super().__init__()
        self.bad_call, self.value, self.dtype = bad_call, value, dtype

    def predict_noise(self, latents, *args):
        out = super().predict_noise(latents.float(), *[a.float() if torch.is_tensor(a) and a.is_floating_point()
                                                       else a for a in args])
        if len(self.calls) >= self.bad_call:
            out[0, 0, 0, 0, 0] = self.value
        return out.to(self.dtype)


def _sample(denoiser, views=2, steps=4, **kw):
    x, cond, uncond, plucker = _inputs(views)
    return sample_multiview(denoiser, x, cond, uncond, plucker, _fundamental,
                            DDIMScheduler(num_inference_steps=steps), strategy="fixed", max_batch=16, **kw)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_sampling_stops_at_the_step_whose_prediction_is_not_finite(value):
    den = BreaksAtCall(bad_call=3, value=value)  # 2 views, CFG: one call per step with max_batch 16
    with pytest.raises(NonFiniteError) as caught:
        _sample(den)
    message = str(caught.value)
    assert "noise prediction at step 3 of 4 (timestep" in message and "sampling stopped at that step" in message
    assert "half precision (fp16)" in message and "bf16 or fp32" in message
    assert len(den.calls) == 3  # nothing ran after the bad step


def test_the_message_names_fp16_as_the_cause_when_the_model_computes_in_fp16():
    with pytest.raises(NonFiniteError, match=r"the model computes in half precision \(fp16\), the likely cause"):
        _sample(BreaksAtCall(bad_call=1, dtype=torch.float16))
    assert "bf16 or fp32" in precision_hint(torch.float16) and "computes in float32" in precision_hint(torch.float32)


def test_finite_runs_are_unchanged_by_the_guard():
    assert torch.equal(_sample(MixingDenoiser()), _sample(BreaksAtCall(bad_call=10 ** 6)))


def test_non_finite_start_or_guidance_is_refused_before_any_call():
    x, cond, uncond, plucker = _inputs(2)
    x[1, 2, 0, 1, 1] = float("nan")
    den = MixingDenoiser()
    with pytest.raises(NonFiniteError, match=r"the start latents must be finite, got nan at view 1, channel 2, frame 0"):
        sample_multiview(den, x, cond, uncond, plucker, _fundamental, DDIMScheduler(num_inference_steps=2))
    with pytest.raises(ValueError, match="guidance_scale must be a finite number, got nan"):
        _sample(den, guidance_scale=float("nan"))
    assert den.calls == []


def _linear_tree():
    torch.manual_seed(0)
    root = nn.Module()
    root.a, root.b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    return root


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_lora_merge_refuses_a_non_finite_strength(scale):
    root = _linear_tree()
    before = [p.detach().clone() for p in root.parameters()]
    with pytest.raises(NonFiniteError, match="LoRA strength must be a finite number"):
        merge_lora_into_module(root, {"a": torch.ones(4, 4)}, scale=scale)
    assert all(torch.equal(p, q) for p, q in zip(root.parameters(), before))


def test_lora_merge_that_overflows_half_precision_changes_nothing():
    root = _linear_tree().half()
    before = [p.detach().clone() for p in root.parameters()]
    deltas = {"a": torch.full((4, 4), 1e-3), "b": torch.full((4, 4), 4e4)}  # b: 2 x 4e4 > 65504
    with pytest.raises(NonFiniteError, match=r"merged weight of b must be finite, got inf; strength 2.0 overflows float16"):
        merge_lora_into_module(root, deltas, scale=2.0)
    assert all(torch.equal(p, q) for p, q in zip(root.parameters(), before))  # a was not merged either
    merge_lora_into_module(root, deltas, scale=1.0)  # 4e4 fits: merged
    assert torch.isfinite(root.b.weight).all() and not torch.equal(root.b.weight, before[1])


@pytest.mark.parametrize("field,value", [("strength", math.nan), ("strength", math.inf), ("strength", [0.1, math.nan]),
                                         ("start_percent", math.nan), ("end_percent", math.inf)])
def test_feature_cache_settings_that_are_not_finite_are_refused(field, value):
    with pytest.raises(ValueError):
        FeatureCacheConfig(**{field: value})


def test_frames_with_nan_are_never_written(tmp_path):
    frames = np.full((2, 3, 8, 8, 3), 0.5, dtype=np.float32)
    frames[1, 2, 4, 4, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"^frames must be finite, got nan at view 1, frame 2; nothing is written"):
        check_multiview_frames(frames)
    with pytest.raises(NonFiniteError):
        write_multiview(frames, str(tmp_path / "out"), lambda key: f"clip_{key}", format="png")
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []


def test_first_non_finite_for_tensors_and_arrays():
    t = torch.zeros(2, 3)
    assert first_non_finite(t) is None and first_non_finite(torch.zeros(2, dtype=torch.long)) is None
    t[1, 2] = -math.inf
    assert first_non_finite(t) == [1, 2] and first_non_finite(t.numpy()) == [1, 2]
    with pytest.raises(NonFiniteError, match=r"^x must be finite, got -inf at row 1; fix it$"):
        require_finite(t, "x", axes=("row",), hint="fix it")


@pytest.mark.parametrize("shape", [(6, 5, 7), (3, 40), (1, 2, 33)], ids=["rows", "big_rows", "one_big_row"])
@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_the_sliced_search_finds_the_same_first_element(monkeypatch, shape, kind):
    monkeypatch.setattr("cvd_core.guards.CHECK_CHUNK_ELEMENTS", 16)  # slices of rows, rows in slices
    values = torch.zeros(shape)
    flat = values.view(-1)
    for position in (flat.numel() - 1, flat.numel() // 2, 0):
        flat[position] = math.nan
        expected = [int(i) for i in torch.unravel_index(torch.tensor(position), shape)]
        assert first_non_finite(values if kind == "torch" else values.numpy()) == expected
    flat.zero_()
    assert first_non_finite(values if kind == "torch" else values.numpy()) is None


def test_the_check_of_a_large_array_allocates_a_slice_not_the_array():
    import tracemalloc

    import numpy as np

    from cvd_core.guards import CHECK_CHUNK_ELEMENTS

    frames = np.zeros((4, 32, 256, 256, 3), dtype=np.float32)  # 4 views x 32 frames: 8x the slice
    tracemalloc.start()
    try:
        require_finite(frames, "images")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A whole-array isfinite would allocate one bool per element (25 MB here); a slice holds at most
    # CHECK_CHUNK_ELEMENTS of them, twice while ~ of a found value is taken.
    assert peak <= 2 * CHECK_CHUNK_ELEMENTS + (1 << 20), peak

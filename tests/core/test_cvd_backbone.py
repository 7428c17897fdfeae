"""CVD backbone on tiny random weights: loading, invariances, chunked attention, settings."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from cvd_core.camera.epipolar import epipolar_attention_bias
from cvd_core.cvd import CheckpointKeyError, load_cvd_model, resolve_dtype, write_tiny_cvd_files
from cvd_core.cvd.cvsm import EpiSelfAttention, cross_view_attention

FRAMES, LATENT = 2, 8  # 2 views x 2 frames (frame 0: pseudo lines) x 8x8 latents (64 px images)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_cvd_files(tmp_path_factory.mktemp("tiny_cvd"), seed=0)


@pytest.fixture(scope="module")
def model(files):
    return load_cvd_model(**files, dtype=torch.float32, device="cpu")


# Invariance tests compare two computations of the same exact value (other memory layouts, batch orders,
# chunks). In float32 their rounding differs from CPU to CPU (kernel blocking, vector width); in float64 it
# is ~1e-15 relative anywhere, far below any real bug, so they run in float64 with bounds relative to
# the output's scale.
@pytest.fixture(scope="module")
def model64(files):
    return load_cvd_model(**files, dtype=torch.float64, device="cpu")


def _double(inputs):
    return {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inputs.items()}


def _assert_same(actual, expected, relative=1e-10):
    torch.testing.assert_close(actual, expected, atol=relative * float(expected.abs().max()), rtol=0)


def _look_at(angle):
    centre = torch.tensor([math.cos(angle), 0.2, math.sin(angle)], dtype=torch.float64) * 2.0
    z = -centre / centre.norm()
    x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), z)
    x = x / x.norm()
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.stack([x, torch.linalg.cross(z, x), z], dim=1)
    c2w[:3, 3] = centre
    return c2w


def _fundamental(c2w_src, c2w_tgt, K):
    rel = torch.linalg.inv(c2w_tgt) @ c2w_src
    R, t = rel[:3, :3], rel[:3, 3]
    tx = torch.tensor([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]], dtype=torch.float64)
    return (torch.linalg.inv(K).T @ tx @ R @ torch.linalg.inv(K)).float()


def _inputs(seed=0, same_views=False):
    """2 views (rows 0, 1), partners of each other; frame 0 shares the pose (F = 0)."""
    g = torch.Generator().manual_seed(seed)
    size = 8 * LATENT
    K = torch.tensor([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], dtype=torch.float64)
    F = torch.zeros(2, FRAMES, 3, 3)
    for f in range(1, FRAMES):
        a, b = _look_at(0.1 * f), _look_at(-0.1 * f if not same_views else 0.1 * f)
        F[0, f] = _fundamental(a, b, K)
        F[1, f] = F[0, f].T
    latents = torch.randn(2, 4, FRAMES, LATENT, LATENT, generator=g)
    plucker = torch.randn(2, 6, FRAMES, size, size, generator=g)
    text = torch.randn(1, 77, 32, generator=g).expand(2, 77, 32).clone()
    if same_views:
        latents[1], plucker[1] = latents[0], plucker[0]
    return dict(latents=latents, timestep=torch.tensor(500), text=text, plucker=plucker, F_mats=F,
                partner=torch.tensor([1, 0]))


def test_tiny_files_strict_key_accounting(files, model):
    report = model.load_report
    expected = {"unet": 682, "motion_module": 560, "cameractrl_processors": 40, "cvd": 520,
                "cameractrl_pose_encoder": 146}
    for role, count in expected.items():
        assert report[role]["loaded"] == count, role
        assert report[role]["unexpected"] == [] and report[role]["kept_as_built"] == [], role
    cvd = torch.load(files["cvd"], weights_only=True)
    assert set(cvd) == {"unet_trainable_dict"}
    assert all(".epi_modules." in k for k in cvd["unet_trainable_dict"])
    cameractrl = torch.load(files["cameractrl"], weights_only=True)
    assert set(cameractrl) == {"pose_encoder_state_dict", "attention_processor_state_dict"}


def test_single_file_checkpoint_loads_the_same_weights(files, model, tmp_path):
    single = write_tiny_cvd_files(tmp_path, seed=0, single_file=True)
    assert all(k.startswith("model.diffusion_model.") for k in load_file(single["unet"]))
    other = load_cvd_model(**single)
    ours, theirs = model.state_dict(), other.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_missing_trained_key_names_file_and_key(files, tmp_path):
    cvd = torch.load(files["cvd"], weights_only=True)
    dropped = sorted(cvd["unet_trainable_dict"])[3]
    del cvd["unet_trainable_dict"][dropped]
    broken = tmp_path / "CVD_broken.ckpt"
    torch.save(cvd, broken)
    with pytest.raises(CheckpointKeyError, match=dropped.replace(".", r"\.")) as info:
        load_cvd_model(**{**files, "cvd": str(broken)})
    assert "CVD_broken.ckpt" in str(info.value)


def test_adapter_lora_is_fused(files, tmp_path):
    sd15 = load_file(files["unet"] + "/diffusion_pytorch_model.safetensors")
    target = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    out_target = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.weight"
    g = torch.Generator().manual_seed(3)
    adapter = {}
    for key in (target, out_target):
        module, proj = key.split(".to_")[0], "to_" + key.split(".to_")[1].split(".")[0]
        adapter[f"{module}.processor.{proj}_lora.down.weight"] = torch.randn(4, sd15[key].shape[1], generator=g)
        adapter[f"{module}.processor.{proj}_lora.up.weight"] = torch.randn(sd15[key].shape[0], 4, generator=g)
    path = tmp_path / "v3_sd15_adapter.ckpt"
    torch.save({"state_dict": adapter}, path)
    single = write_tiny_cvd_files(tmp_path / "sf", seed=0, single_file=True)
    fused = load_cvd_model(**single, adapter=str(path), adapter_scale=0.5)
    weights = fused.unet.unet.state_dict()
    for key in (target, out_target):
        module, proj = key.split(".to_")[0], "to_" + key.split(".to_")[1].split(".")[0]
        delta = adapter[f"{module}.processor.{proj}_lora.up.weight"] @ adapter[f"{module}.processor.{proj}_lora.down.weight"]
        torch.testing.assert_close(weights[key], sd15[key] + 0.5 * delta)
    assert fused.load_report["adapter"]["fused"] == 2


def test_zeroed_cvsm_output_equals_network_without_cvsm(files, model64):
    inputs = _double(_inputs())
    plain = load_cvd_model(**{**files, "cvd": None}, dtype=torch.float64)
    zeroed = load_cvd_model(**files, dtype=torch.float64)
    for name, p in zeroed.named_parameters():
        if "epi_transformer.proj_out" in name:
            p.data.zero_()
    a, b = zeroed.predict_noise(**inputs), plain.predict_noise(**inputs)
    _assert_same(a, b)  # other memory layouts only (6e-15 here, at a scale of 2.2)
    # ... and the CVSMs do matter with their trained output projection
    assert (model64.predict_noise(**inputs) - b).abs().max() > 1e-3


def test_swapping_views_swaps_outputs(model64):
    inputs = _double(_inputs(seed=1))
    out = model64.predict_noise(**inputs)
    swapped = {k: (v.flip(0) if k in ("latents", "text", "plucker", "F_mats") else v) for k, v in inputs.items()}
    _assert_same(model64.predict_noise(**swapped), out.flip(0))


def test_identical_cameras_and_noise_give_identical_outputs(model64):
    out = model64.predict_noise(**_double(_inputs(seed=2, same_views=True)))
    _assert_same(out[0], out[1])


def test_epipolar_bias_is_applied():
    """A key token far from the query's epipolar line barely matters; one on the line does."""
    torch.manual_seed(0)
    feat, size, dim = 8, 256, 32
    K = torch.tensor([[256.0, 0, 128], [0, 256.0, 128], [0, 0, 1]], dtype=torch.float64)
    F = _fundamental(_look_at(0.0), _look_at(0.6), K)[None]
    bias = epipolar_attention_bias(F, feat, feat, size)[0]
    attention = EpiSelfAttention(dim, 8, dim // 8)
    query = 27
    on_line = int(bias[query].argmax())
    off_line = int(bias[query].argmin())
    assert bias[query, off_line] < -50
    x = torch.randn(2, feat * feat, dim)
    partner_rows = torch.tensor([1, 0])
    full_bias = torch.stack([bias, bias])

    def out_for(x):
        return attention(x, partner_rows, lambda s, e: full_bias[s:e])[0, query]

    base = out_for(x)
    changes = {}
    for token in (on_line, off_line):
        perturbed = x.clone()
        perturbed[1, token] += 5.0
        changes[token] = (out_for(perturbed) - base).abs().max().item()
    assert changes[on_line] > 1e-3
    assert changes[off_line] < 1e-3 * changes[on_line]


def test_chunked_attention_equals_unchunked():
    torch.manual_seed(1)
    rows, heads, n, d = 5, 2, 7, 4
    q, k, v = (torch.randn(rows, heads, n, d, dtype=torch.float64) for _ in range(3))  # float64: see model64
    partner = torch.tensor([1, 0, 3, 2, 2])
    bias = -torch.rand(rows, n, n, dtype=torch.float64) * 10
    reference = cross_view_attention(q, k, v, partner, lambda s, e: bias[s:e], score_budget=None)
    for budget in (heads * n * n * 2, heads * n * n, heads * n * 3, 1):  # rows with remainder, queries
        chunked = cross_view_attention(q, k, v, partner, lambda s, e: bias[s:e], score_budget=budget)
        _assert_same(chunked, reference)
    # never self-attention: row 0 must use row 1's keys
    own = cross_view_attention(q, k, v, torch.arange(rows), lambda s, e: bias[s:e], score_budget=None)
    assert (own - reference).abs().max() > 1e-3


def test_chunked_network_equals_unchunked(model64):
    inputs = _double(_inputs(seed=3))
    model64.attention_score_budget = None
    full = model64.predict_noise(**inputs)
    model64.attention_score_budget = 20000  # query chunks (with a remainder) at 8x8, row chunks below
    try:
        chunked = model64.predict_noise(**inputs)
    finally:
        model64.attention_score_budget = 1 << 27
    # The epipolar bias is float32 by design (it reproduces the official rounding) and each chunk computes
    # its own rows of it: that float32 rounding (5e-8 of the scale here) is the floor, 20x below the bound.
    _assert_same(chunked, full, relative=1e-6)


def test_first_frame_slope_settings(model):
    inputs = _inputs(seed=4)
    horizontal = model.predict_noise(**inputs)
    try:
        model.first_frame_slope = 0.3
        sloped = model.predict_noise(**inputs)
        assert (sloped[:, :, 0] - horizontal[:, :, 0]).abs().max() > 1e-4
        model.first_frame_slope = "random"
        model.slope_generator = torch.Generator().manual_seed(0)
        draws = {model._draw_slope() for _ in range(5)}
        assert len(draws) == 5 and all(0 <= d <= math.pi for d in draws)
        model.first_frame_slope = "steep"
        with pytest.raises(ValueError, match="first_frame_slope"):
            model.predict_noise(**inputs)
    finally:
        model.first_frame_slope = None


def test_pseudo_lines_on_frame_zero_of_every_video_at_any_length(model, monkeypatch):
    """First-frame pseudo lines go to frame 0 of every batch row, whatever the frame count.

    The official ``EpiEncoding`` picks every 16th row of the (batch frame) flattening
    (``F_coords[::16]``), which is frame 0 of every video only for CVD's 16-frame videos; at 2 frames
    it would be rows 0, 8, ... and leave row 1's frame 0 (F = 0) without a line. We deliberately keep
    the rule's meaning at every length, so the official code is only comparable at 16 frames
    (``benchmarks/bench_cvd_backbone.py --official-src`` refuses other lengths).
    """
    import cvd_core.cvd.model as model_module

    seen = []
    original = model_module.epipolar_attention_bias

    def recording(F, *args, pseudo_rows=None, **kwargs):
        seen.append(pseudo_rows.cpu().clone())
        return original(F, *args, pseudo_rows=pseudo_rows, **kwargs)

    monkeypatch.setattr(model_module, "epipolar_attention_bias", recording)
    inputs = _inputs(seed=6)
    model.predict_noise(**inputs)
    batch = inputs["latents"].shape[0]
    expected = torch.arange(batch * FRAMES) % FRAMES == 0
    assert seen and all(torch.equal(rows, expected) for rows in seen), (seen[:1], expected)
    assert not torch.equal(expected, torch.arange(batch * FRAMES) % 16 == 0)  # the case the fixture (16 frames) misses


def test_non_square_latents(model):
    inputs = _inputs(seed=5)
    inputs["latents"] = torch.cat([inputs["latents"], inputs["latents"]], dim=-1)  # 8x16 latents
    inputs["plucker"] = torch.cat([inputs["plucker"], inputs["plucker"]], dim=-1)  # 64x128 images
    for mode in ("relative", "absolute"):
        model.bias_mode = mode
        try:
            out = model.predict_noise(**inputs)
        finally:
            model.bias_mode = "relative"
        assert out.shape == inputs["latents"].shape and torch.isfinite(out).all()


def test_input_errors_name_the_rule(model):
    inputs = _inputs()
    with pytest.raises(ValueError, match="purely cross-view"):
        model.predict_noise(**{**inputs, "partner": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="image resolution"):
        model.predict_noise(**{**inputs, "plucker": inputs["plucker"][..., :32, :32]})
    with pytest.raises(ValueError, match="F_mats"):
        model.predict_noise(**{**inputs, "F_mats": inputs["F_mats"][:, :1]})


def test_dtypes(files):
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("fp16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("fp8", "cpu")
    half = load_cvd_model(**files, dtype=torch.bfloat16)
    inputs = _inputs(seed=6)
    out = half.predict_noise(**inputs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert half.dtype == torch.bfloat16

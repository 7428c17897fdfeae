"""CVD backbone parity with the official code (``../shared/fixtures/cvd_backbone/two_view``).

Runs on every device ``CVD_TEST_DEVICE`` selects (fp32, TF32 off on CUDA) with the fixture's
tolerances; outputs are compared on the CPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cvd_core.camera.epipolar import epipolar_attention_bias
from cvd_core.cvd import load_cvd_model


@pytest.fixture(scope="module")
def case(compute_device):
    from tests._shared import shared_fixture

    root = shared_fixture("cvd_backbone/two_view")
    weights = root / "weights"
    model = load_cvd_model(unet=weights / "unet", motion_module=weights / "animatediff_mm.ckpt",
                           cameractrl=weights / "CameraCtrl.ckpt", cvd=weights / "CVD.ckpt",
                           dtype=torch.float32, device=compute_device)
    io = load_file(str(root / "io.safetensors"))
    config = json.loads((root / "config.json").read_text())
    captured = {}
    cvsm0 = model.unet.unet.down_blocks[0].epi_modules[0]
    handle = cvsm0.register_forward_hook(
        lambda mod, args, out: captured.update(inp=args[0].cpu(), out=out.cpu()))
    # Inputs stay on the CPU: predict_noise moves them to the model's device (the sampler's contract).
    noise = model.predict_noise(io["latents_unet"], io["timestep"], io["text_unet"],
                                io["plucker_views"].float().repeat_interleave(2, dim=0),
                                io["F_mats_unet"], io["partner"])
    handle.remove()
    assert noise.device.type == compute_device.type
    return model, io, config, noise.cpu(), captured


def test_official_files_load_with_strict_key_accounting(case):
    model, _, config, _, _ = case
    counts = config["official_checkpoint_key_groups"]
    report = model.load_report
    assert report["unet"]["loaded"] == counts["sd15_unet"]
    assert report["motion_module"]["loaded"] == counts["animatediff_mm"]
    assert report["cameractrl_processors"]["loaded"] == counts["cameractrl_attention_processor"]
    assert report["cvd"]["loaded"] == counts["cvd_unet_trainable_dict"]
    assert report["cameractrl_pose_encoder"]["loaded"] == counts["cameractrl_pose_encoder"]
    for role in ("unet", "motion_module", "cameractrl_processors", "cvd", "cameractrl_pose_encoder"):
        assert report[role]["unexpected"] == [] and report[role]["kept_as_built"] == [], role


def test_noise_prediction_matches_official(case):
    _, io, config, noise, _ = case
    assert noise.shape == io["noise_pred"].shape
    err = (noise - io["noise_pred"]).abs().max().item()
    assert err <= config["tolerances"]["noise_pred"], f"noise_pred max error {err:.3g}"
    gs = config["guidance_scale"]
    cfg = noise[0::2] + gs * (noise[1::2] - noise[0::2])
    assert (cfg - io["noise_pred_cfg"]).abs().max().item() <= config["tolerances"]["noise_pred_cfg"]


def test_first_cvsm_input_output_match(case):
    _, io, _, _, captured = case
    assert (captured["inp"][1::2] - io["cvsm0_in_cond"]).abs().max().item() <= 2e-4
    assert (captured["out"][1::2] - io["cvsm0_out_cond"]).abs().max().item() <= 2e-4


def test_pose_encoder_features_match(case):
    model, io, _, _, _ = case
    views = io["pose_feat_views"].tolist() if "pose_feat_views" in io else [0]
    with torch.no_grad():
        features = model.pose_encoder(io["plucker_views"].float()[views].to(model.device))
    for level, feature in enumerate(features):
        ours = feature.cpu().permute(0, 2, 1, 3, 4).reshape(io[f"pose_feat_{level}"].shape)  # (view f) c h w
        assert (ours - io[f"pose_feat_{level}"]).abs().max().item() <= 1e-5, level


def test_cvsm_bias_rows_match(case):
    model, io, config, _, _ = case
    rows = io["cvsm0_attn0_mask_rows"]
    F_rows = io["F_mats_unet"].reshape(-1, 3, 3)[rows].to(model.device)
    frames = io["F_mats_unet"].shape[1]
    feat = int(io["cvsm0_attn0_mask"].shape[-1] ** 0.5)
    bias = epipolar_attention_bias(F_rows, feat, feat, config["F_mat_size"],
                                   pseudo_rows=(rows % frames == 0).to(model.device))
    assert (bias.cpu() - io["cvsm0_attn0_mask"]).abs().max().item() <= 1e-4

"""CV-VAE parity against the official implementation's outputs (../shared/fixtures/cvvae).

Each case builds the model from the fixture's exact constructor kwargs, loads the official-named
weights with strict=True, and compares moments / z (atol 1e-4, rtol 1e-4) and x_rec = decode(z)
(atol 2e-4, rtol 1e-4) using the default (official) chunking and tiling. The parity cases run on
every device ``CVD_TEST_DEVICE`` selects (``compute_device``: fp32, TF32 off on CUDA), with the same
tolerances; results are compared on the CPU.
"""

from __future__ import annotations

import json

import pytest
import torch

from cvd_core.cvvae import CVVAEModel, CVVAESD3Model, build_model
from tests._shared import shared_fixture

CASES = [
    ("tiny", "tiny_1x64"),
    ("tiny", "tiny_9x64"),
    ("tiny", "tiny_chunk_tile_25x128"),
    ("tiny_sd3", "sd3_tiny_9x64"),
]


def _load_case(folder: str, case: str, device="cpu"):
    from safetensors.torch import load_file

    root = shared_fixture(f"cvvae/{folder}")
    meta = json.loads((root / case / "config.json").read_text())
    variant = {"CVVAEModel": "z4", "CVVAESD3Model": "z16"}[meta["class"]]
    model = build_model(variant, meta["constructor_kwargs"])
    model.load_state_dict(load_file(str(root / "weights.safetensors")), strict=True)
    return model.to(device).eval(), meta, load_file(str(root / case / "io.safetensors"))


@pytest.mark.parametrize("folder,case", CASES, ids=[c for _, c in CASES])
def test_parity_with_official(folder, case, compute_device):
    model, meta, io = _load_case(folder, case, compute_device)
    assert sum(p.numel() for p in model.parameters()) == meta["n_params"]
    post = model.encode(io["x"].to(compute_device))
    assert post.moments.device.type == compute_device.type
    moments, mean, std = post.moments.cpu(), post.mean.cpu(), post.std.cpu()
    assert moments.shape == io["moments"].shape
    torch.testing.assert_close(moments, io["moments"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(post.mode().cpu(), io["z"], atol=1e-4, rtol=1e-4)
    # The reparameterised sample with the fixture's noise checks the logvar clamp and std.
    torch.testing.assert_close(mean + std * io["eps"], io["z_sample"], atol=1e-4, rtol=1e-4)
    x_rec = model.decode(io["z"].to(compute_device))
    assert x_rec.shape == io["x_rec"].shape and x_rec.device.type == compute_device.type
    torch.testing.assert_close(x_rec.cpu(), io["x_rec"], atol=2e-4, rtol=1e-4)


def test_fixture_classes_match_variants():
    model, meta, _ = _load_case("tiny_sd3", "sd3_tiny_9x64")
    assert isinstance(model, CVVAESD3Model) and model.latent_channels == 16
    model, meta, _ = _load_case("tiny", "tiny_1x64")
    assert isinstance(model, CVVAEModel) and model.latent_channels == 4

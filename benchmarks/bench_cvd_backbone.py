"""One CVD denoiser step at full SD1.5 width (random weights): time, peak memory, CVSM time share.

Usage: python benchmarks/bench_cvd_backbone.py [--views 2 4] [--frames 16] [--size 256]
       [--dtype fp32] [--device cpu]
Random weights are written once to a temporary folder in the official layouts (full width) and
loaded through ``load_cvd_model``. The UNet batch is the CFG layout (2 rows per view).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from cvd_core.cvd import load_cvd_model, resolve_dtype  # noqa: E402
from cvd_core.cvd import tiny as tiny_module


def write_full(folder):
    from safetensors.torch import save_file
    from cvd_core.cvd.network import CVDUNet
    from cvd_core.cvd.pose_encoder import CameraPoseEncoder
    from cvd_core.cvd.sd15_checkpoint import sd15_config
    import os

    config = sd15_config()
    generator = torch.Generator().manual_seed(0)
    net = CVDUNet(config)
    pose = CameraPoseEncoder(channels=config["block_out_channels"])
    for module in (net, pose):
        tiny_module._random_fill(module, generator)
    state = net.unet.state_dict()
    unet_dir = os.path.join(folder, "unet")
    os.makedirs(unet_dir, exist_ok=True)
    with open(os.path.join(unet_dir, "config.json"), "w") as f:
        json.dump(config, f)
    save_file({k: v.contiguous() for k, v in state.items() if "motion_modules." not in k
               and "epi_modules." not in k}, os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    paths = dict(unet=unet_dir, motion_module=os.path.join(folder, "mm.ckpt"),
                 cameractrl=os.path.join(folder, "CameraCtrl.ckpt"), cvd=os.path.join(folder, "CVD.ckpt"))
    torch.save({k: v for k, v in state.items() if "motion_modules." in k and ".processor." not in k},
               paths["motion_module"])
    torch.save({"pose_encoder_state_dict": pose.state_dict(),
                "attention_processor_state_dict": {k: v for k, v in state.items() if ".processor." in k}},
               paths["cameractrl"])
    torch.save({"unet_trainable_dict": {k: v for k, v in state.items() if "epi_modules." in k}}, paths["cvd"])
    del net, pose, state
    return paths


def run(views, frames, size, dtype, device, files):
    model = load_cvd_model(**files, dtype=dtype, device=device)
    cvsm_time = [0.0]

    def timed(module, forward):
        def wrapper(*args, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            cvsm_time[0] += time.perf_counter() - start
            return out
        return wrapper

    for block in list(model.unet.unet.down_blocks) + list(model.unet.unet.up_blocks):
        for cvsm in block.epi_modules:
            cvsm.forward = timed(cvsm, cvsm.forward)
    batch, h = 2 * views, size // 8
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, frames, h, h, generator=g)
    plucker = torch.randn(batch, 6, frames, size, size, generator=g)
    F = torch.randn(batch, frames, 3, 3, generator=g) * 1e-3
    F[:, 0] = 0
    # views paired (0,1), (2,3), ...; each CFG branch attends to the same branch of its partner
    partner = torch.tensor([2 * (v ^ 1) + c for v in range(views) for c in (0, 1)])
    text = torch.randn(batch, 77, 768, generator=g)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model.predict_noise(latents, torch.tensor(500), text, plucker, F, partner)
    total = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"views": views, "frames": frames, "size": size, "dtype": str(dtype), "device": str(device),
            "seconds": round(total, 2), "cvsm_share": round(cvsm_time[0] / total, 3),
            "peak_gib": round(peak, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))
    with tempfile.TemporaryDirectory() as folder:
        files = write_full(folder)
        for views in args.views:
            print(json.dumps(run(views, args.frames, args.size, dtype, device, files)), flush=True)


if __name__ == "__main__":
    main()

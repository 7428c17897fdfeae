"""One CVD denoiser step at full SD1.5 width (random weights): time, peak memory, CVSM share, FLOPs.

Usage: python benchmarks/bench_cvd_backbone.py [--views 2 4] [--frames 16] [--size 256]
       [--dtype fp32] [--device cpu] [--repeats 1] [--threads 0]
       python benchmarks/bench_cvd_backbone.py --official-src ~/src/CVD --views 2 [--size 128 --width 64]
           [--fp64-reference]

Random weights are written once to a temporary folder in the official layouts (full width) and
loaded through ``load_cvd_model``. The UNet batch is the CFG layout (2 rows per view: row
2·view + branch), the views paired (0,1), (2,3), ... on CVD's ``circle`` rig (real F matrices).

``--official-src DIR`` (a local clone of github.com/CollaborativeVideoDiffusion/CVD, never copied):
the official ``UNet3DConditionModelPoseCond`` + ``CameraPoseEncoder`` built from that checkout, with
its inference config (``configs/inference_config.yaml``; first-frame pseudo lines horizontal and
``F_mat_size`` = the image height, as our parity fixture) on the same weight files and inputs. Both
run interleaved (ours, official, ours, ...); the script prints every time, the median ratio
official/ours and the max output difference. The official code needs three shims to import with
today's diffusers (``benchmarks/official_code.py``); they are printed.

The comparison runs at **16 frames only**: the official ``EpiEncoding.get_attn_map`` puts the
first-frame pseudo epipolar lines on every 16th row of the (batch frame) flattening
(``F_coords[::16]``), which is frame 0 of every video only when videos have 16 frames (CVD's
trained length). Ours puts them on frame 0 of every video at any length. At 4 frames the official
code gives frame 0 of all but every 4th video no line (F = 0 there: bias 0, full attention), and
the outputs differ by ~0.1: a different computation, not a timing of the same one.
``--fp64-reference`` also runs ours in float64 and prints both sides' distance from it: the
float32 noise floor the ours-vs-official difference is to be read against.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from cvd_core.cvd import load_cvd_model, resolve_dtype  # noqa: E402
from cvd_core.cvd import tiny as tiny_module  # noqa: E402


def write_full(folder, width=None, single_file=False, file_dtype=torch.float32):
    """Random CVD weights in the official layouts under ``folder``; returns the paths for load_cvd_model.

    ``width`` None = SD1.5's widths (320/640/1280/1280, 768-wide text); an int = that width at every
    level (quick runs). The UNet is a diffusers folder (``paths["unet"]``, what the official code
    loads); ``single_file`` also writes it as one LDM ``.safetensors`` (``paths["unet_file"]``:
    ComfyUI's ``models/checkpoints`` form).
    """
    from safetensors.torch import save_file
    from cvd_core.cvd.network import CVDUNet
    from cvd_core.cvd.pose_encoder import CameraPoseEncoder
    from cvd_core.cvd.sd15_checkpoint import diffusers_to_ldm_keys, sd15_config

    config = sd15_config() if width is None else tiny_module.tiny_unet_config(width, 768)
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        net = CVDUNet(config)
        pose = CameraPoseEncoder(channels=config["block_out_channels"])
    net, pose = net.to_empty(device="cpu"), pose.to_empty(device="cpu")
    for module in (net, pose):
        tiny_module._random_fill(module, generator)
        for name, buffer in module.named_buffers():  # meta construction left the buffers empty: rebuild them
            if name.endswith("pos_encoder.pe"):
                buffer.copy_(_positional_encoding(buffer.shape))
    state = {k: v.to(file_dtype).contiguous() for k, v in net.unet.state_dict().items()}
    sd15 = {k: v for k, v in state.items() if "motion_modules." not in k and "epi_modules." not in k}
    paths = dict(motion_module=os.path.join(folder, "mm.ckpt"), cameractrl=os.path.join(folder, "CameraCtrl.ckpt"),
                 cvd=os.path.join(folder, "CVD.ckpt"))
    if single_file:
        paths["unet_file"] = os.path.join(folder, "sd15.safetensors")
        save_file(diffusers_to_ldm_keys(sd15, config["layers_per_block"]), paths["unet_file"])
    unet_dir = os.path.join(folder, "unet")
    os.makedirs(unet_dir, exist_ok=True)
    with open(os.path.join(unet_dir, "config.json"), "w") as f:
        json.dump(config, f)
    save_file(sd15, os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    paths["unet"] = unet_dir
    torch.save({k: v for k, v in state.items() if "motion_modules." in k and ".processor." not in k},
               paths["motion_module"])
    torch.save({"pose_encoder_state_dict": {k: v.to(file_dtype).contiguous() for k, v in pose.state_dict().items()},
                "attention_processor_state_dict": {k: v for k, v in state.items() if ".processor." in k}},
               paths["cameractrl"])
    torch.save({"unet_trainable_dict": {k: v for k, v in state.items() if "epi_modules." in k}}, paths["cvd"])
    del net, pose, state, sd15
    return paths


LOADER_ROLES = ("unet", "motion_module", "cameractrl", "cvd")


def load_files(files, dtype, device):
    """``load_cvd_model`` on the files of ``write_full`` (the diffusers-folder UNet)."""
    return load_cvd_model(**{role: files[role] for role in LOADER_ROLES}, dtype=dtype, device=device)


def _positional_encoding(shape):
    from cvd_core.cvd.layers import PositionalEncoding

    return PositionalEncoding(shape[-1], max_len=shape[1]).pe


def step_inputs(views, frames, size, seed=0, text_width=768):
    """CFG batch of ``views`` views (rows 2·view + branch) on the circle rig; CPU tensors (predict_noise moves them)."""
    from cvd_core.camera import make_preset_rig, pair_fundamentals, plucker_embedding

    rig = make_preset_rig("circle", views, frames, size, size)
    plucker = plucker_embedding(rig.K, rig.c2w, size, size).permute(0, 2, 1, 3, 4).float()
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(views, 4, frames, size // 8, size // 8, generator=g)
    text = torch.randn(2, 77, text_width, generator=g)
    mate = [v ^ 1 if (v ^ 1) < views else (v - 1 if views % 2 else v) for v in range(views)]
    F = torch.stack([pair_fundamentals(rig, v, mate[v]).float() for v in range(views) for _ in (0, 1)])
    partner = torch.tensor([2 * mate[v] + b for v in range(views) for b in (0, 1)])
    return dict(latents=latents.repeat_interleave(2, 0), timestep=torch.tensor(481), text=text.repeat(views, 1, 1),
                plucker=plucker.repeat_interleave(2, 0).contiguous(), F_mats=F, partner=partner)


class CVSMTimer:
    """Time spent inside the CVSMs of ``model`` (CUDA events on GPU: no sync inside the step)."""

    def __init__(self, model, device):
        self.device = torch.device(device)
        self.pairs, self.seconds = [], 0.0
        self._originals = []
        for block in list(model.unet.unet.down_blocks) + list(model.unet.unet.up_blocks):
            for cvsm in getattr(block, "epi_modules", []):
                self._originals.append((cvsm, cvsm.forward))
                cvsm.forward = self._wrap(cvsm.forward)

    def _wrap(self, forward):
        def wrapper(*args, **kwargs):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = forward(*args, **kwargs)
                end.record()
                self.pairs.append((start, end))
                return out
            t0 = time.perf_counter()
            out = forward(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            return out
        return wrapper

    def reset(self):
        self.pairs, self.seconds = [], 0.0

    def total(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.pairs) / 1000.0
        return self.seconds

    def remove(self):
        for cvsm, forward in self._originals:
            cvsm.forward = forward


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def count_flops(step) -> int:
    """FLOPs of one call of ``step`` (matmuls, convolutions, attention) by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def peak_bytes(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(views, frames, size, dtype, device, files, repeats=1, flops=False, model=None):
    """Our step: seconds (median of ``repeats`` after a warm-up on GPU), CVSM share, peak memory, FLOPs."""
    device = torch.device(device)
    model = model or load_files(files, dtype, device)
    inputs = step_inputs(views, frames, size)
    timer = CVSMTimer(model, device)
    step = lambda: model.predict_noise(**inputs)  # noqa: E731
    if device.type == "cuda":
        step()  # warm-up: kernels picked, memory pool grown
        torch.cuda.reset_peak_memory_stats(device)
    times, shares = [], []
    for _ in range(max(1, repeats)):
        timer.reset()
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
        shares.append(timer.total() / times[-1])
    timer.remove()
    seconds = sorted(times)[len(times) // 2]
    result = {"views": views, "rows": 2 * views, "frames": frames, "size": size, "dtype": str(dtype).replace("torch.", ""),
              "device": str(device), "seconds": round(seconds, 4), "all_seconds": [round(t, 4) for t in times],
              "cvsm_share": round(sorted(shares)[len(shares) // 2], 3),
              "peak_gib": round(peak_bytes(device) / 2**30, 2),
              "peak_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS"}
    if flops:
        result["flops"] = count_flops(step)
        result["tflops_per_s"] = round(result["flops"] / seconds / 1e12, 2)
    return result


# ---------------------------------------------------------------- the official implementation

def official_model(src, files, size, dtype, device):
    """The official denoiser (UNet3DConditionModelPoseCond + CameraPoseEncoder) on the same files."""
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import official_code

    UNet, PoseEncoder = official_code.load_official_cvd(src)
    config = yaml.safe_load((Path(src) / "configs" / "inference_config.yaml").read_text())
    unet_kwargs = config["unet_additional_kwargs"]
    epi = unet_kwargs["epi_module_kwargs"]
    epi["epi_position_encoding_F_mat_size"] = size  # the official scripts set it to the image height
    epi["epi_rand_slope_ff"] = False  # horizontal first-frame lines: deterministic, as our default
    unet_dir = Path(files["unet"])
    widths = json.loads((unet_dir / "config.json").read_text())["block_out_channels"]
    config["pose_encoder_kwargs"]["channels"] = widths  # [320, 640, 1280, 1280] at full width, as the yaml
    config["attention_processor_kwargs"]["pose_feature_dimensions"] = widths
    unet = UNet.from_pretrained_2d(str(unet_dir.parent), subfolder=unet_dir.name, unet_additional_kwargs=unet_kwargs)
    unet.set_all_attn_processor(add_spatial_lora=False, add_motion_lora=False,
                                lora_kwargs={"lora_rank": 2, "lora_scale": 1.0},
                                motion_lora_kwargs={"lora_rank": -1, "lora_scale": 1.0},
                                sync_lora_kwargs={"sync_lora_rank": 0, "sync_lora_scale": 0},
                                spatial_extended_attention=False, **config["attention_processor_kwargs"])
    for state in (torch.load(files["motion_module"], map_location="cpu", weights_only=True),
                  torch.load(files["cvd"], map_location="cpu", weights_only=True)["unet_trainable_dict"]):
        _, unexpected = unet.load_state_dict(state, strict=False)
        assert not unexpected, unexpected[:5]
    cameractrl = torch.load(files["cameractrl"], map_location="cpu", weights_only=True)
    pose = PoseEncoder(**config["pose_encoder_kwargs"])
    pose.load_state_dict(cameractrl["pose_encoder_state_dict"], strict=True)
    _, unexpected = unet.load_state_dict(cameractrl["attention_processor_state_dict"], strict=False)
    assert not unexpected, unexpected[:5]
    unet = unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    pose = pose.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return unet, pose, list(official_code.NOTES)


def official_step(unet, pose, inputs, device, dtype):
    """One official UNet call on our inputs (2 views: F as a tensor; more: the N-view [F, kv_index] form)."""
    from einops import rearrange

    rows, frames = inputs["latents"].shape[0], inputs["latents"].shape[2]
    plucker = inputs["plucker"].to(device, dtype)
    features = [rearrange(x, "(b f) c h w -> b c f h w", b=rows) for x in pose(plucker)]
    F = inputs["F_mats"].to(device, torch.float32)  # [b, f, 3, 3]; the official bias uses F.float()
    if rows == 4:
        F_arg = F  # the two-video pipeline: partner = the other batch half (our partner [2, 3, 0, 1])
    else:
        kv_index = (inputs["partner"][:, None] * frames + torch.arange(frames)).reshape(-1).to(device)
        F_arg = [F, kv_index]
    timestep = inputs["timestep"].to(device)
    return unet(inputs["latents"].to(device, dtype), timestep, F_mats=F_arg,
                encoder_hidden_states=inputs["text"].to(device, dtype), pose_embedding_features=features).sample


OFFICIAL_FRAMES = 16  # the official first-frame rule (F_coords[::16]) assumes 16-frame videos


def check_official_frames(frames: int) -> None:
    """The official code computes what ours does only at 16 frames (module docstring); refuse others."""
    if frames != OFFICIAL_FRAMES:
        raise ValueError(f"--frames must be {OFFICIAL_FRAMES} with --official-src, got {frames}: the official "
                         "EpiEncoding puts the first-frame pseudo lines on every 16th (batch frame) row "
                         "(F_coords[::16]), which is frame 0 of every video only at 16 frames, so at other "
                         "lengths the two implementations compute different attention biases")


def fp64_reference(files, inputs, device):
    """Our step in float64 (F stays float32, as both implementations compute the bias from it)."""
    model = load_files(files, torch.float64, device)
    inputs = dict(inputs, latents=inputs["latents"].double())  # predict_noise returns the latents' dtype
    with torch.no_grad():
        out = model.predict_noise(**inputs)
    del model
    return out


def compare_official(src, views, frames, size, dtype, device, files, repeats, reference=False):
    """Interleaved ours vs official on one step; {times, ratio, max diff, notes}.

    ``reference``: also each side's max distance from our float64 step (the noise floor).
    """
    check_official_frames(frames)
    device = torch.device(device)
    ours = load_files(files, dtype, device)
    unet, pose, notes = official_model(src, files, size, dtype, device)
    inputs = step_inputs(views, frames, size)
    outputs = {}
    with torch.no_grad():
        calls = {"ours": lambda: outputs.__setitem__("ours", ours.predict_noise(**inputs)),
                 "official": lambda: outputs.__setitem__("official", official_step(unet, pose, inputs, device, dtype))}
        if device.type == "cuda":
            for call in calls.values():
                call()  # warm-up
        times = {name: [] for name in calls}
        for _ in range(max(1, repeats)):
            for name, call in calls.items():
                sync(device)
                start = time.perf_counter()
                call()
                sync(device)
                times[name].append(time.perf_counter() - start)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    diff = (outputs["ours"].float() - outputs["official"].float()).abs().max().item()
    scale = outputs["official"].float().abs().max().item()
    result = {"views": views, "frames": frames, "size": size, "dtype": str(dtype).replace("torch.", ""),
              "device": str(device), "threads": torch.get_num_threads(), "seconds": times,
              "median_ours": med["ours"], "median_official": med["official"],
              "ratio_official_over_ours": med["official"] / med["ours"], "max_abs_diff": diff,
              "official_output_max_abs": scale, "notes": notes}
    if reference:
        del ours, unet, pose  # room for the float64 model
        exact = fp64_reference(files, inputs, device)
        for name, out in outputs.items():
            result[f"max_abs_diff_{name}_vs_ours_fp64"] = (out.double() - exact).abs().max().item()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--flops", action="store_true", help="also count the step's FLOPs (one more step)")
    parser.add_argument("--official-src", help="local clone of github.com/CollaborativeVideoDiffusion/CVD: "
                        "time the official denoiser side by side on the same weights and inputs")
    parser.add_argument("--width", type=int, default=None,
                        help="one width for every UNet level instead of SD1.5's (quick runs; default full width)")
    parser.add_argument("--fp64-reference", action="store_true",
                        help="with --official-src: also run ours in float64 and print each side's distance "
                        "from it (the noise floor; one more model in memory, in float64)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.official_src:
        try:
            check_official_frames(args.frames)
        except ValueError as error:
            parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "load": [round(v, 2) for v in os.getloadavg()]}))
    results = []
    with tempfile.TemporaryDirectory() as folder:
        files = write_full(folder, width=args.width)
        for views in args.views:
            if args.official_src:
                result = compare_official(args.official_src, views, args.frames, args.size, dtype, device, files,
                                          args.repeats, reference=args.fp64_reference)
            else:
                with torch.no_grad():
                    result = run(views, args.frames, args.size, dtype, device, files, args.repeats, args.flops)
            result["load_after"] = [round(v, 2) for v in os.getloadavg()]
            results.append(result)
            print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

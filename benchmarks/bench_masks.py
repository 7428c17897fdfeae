"""Cost of a noise mask in the pack's own loop: CVD Multi-View Sampler from a start latent with a half mask
against the same run without a mask (same seed, steps and denoiser calls: only the per-step re-noise/hold
arithmetic of ``cvd_core.sampling.inpaint`` differs).

    .venv/bin/python benchmarks/bench_masks.py [--views 2] [--frames 8] [--size 64] [--steps 4] [--repeats 5]

The model is the tests' tiny CVD (random weights, width-32 UNet), so the mask's share of a step is the largest it
can be: the ratio is an upper bound for real weights. Runs alternate; the figure is the ratio of median seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("views", 2), ("frames", 8), ("size", 64), ("steps", 4), ("repeats", 5)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args(argv)

    import torch

    from cvd_core.camera import make_preset_rig
    from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
    from nodes.sampling import SAMPLER

    with tempfile.TemporaryDirectory() as work:
        model = load_cvd_model(**write_tiny_cvd_files(Path(work), seed=0), dtype="fp32", device="cpu")
    g = torch.Generator().manual_seed(0)
    h = args.size // 8
    start = torch.randn(args.views, 4, args.frames, h, h, generator=g)
    mask = torch.zeros(args.views * args.frames, args.size, args.size)
    mask[:, :, args.size // 2:] = 1.0
    text = [[torch.randn(1, 77, 32, generator=g), {}]]
    common = dict(cvd_model=model, cameras=make_preset_rig("circle", args.views, args.frames, args.size, args.size),
                  positive=text, negative=text, seed=1, steps=args.steps, cfg=8.5, scheduler="ddim",
                  strategy="random", recurrence=1, max_batch=0, denoise=1.0)
    runs = {"unmasked": {"samples": start}, "masked": {"samples": start, "noise_mask": mask}}
    seconds = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, latent in runs.items():
            began = time.perf_counter()
            SAMPLER.run(latent=latent, **common)
            seconds[name].append(time.perf_counter() - began)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    ratio = median["masked"] / median["unmasked"]
    print(json.dumps({"args": vars(args), "median_s": median, "masked_over_unmasked": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ComfyUI's own samplers on the collaborative denoiser (docs/sampling.md, "Use ComfyUI's samplers").

- Parity, in one process per ComfyUI (``tests/support/core_sampling_inprocess.py``): euler and core's ddim on
  ``cvd_ddim`` sigmas with CVD Noise equal CVD Multi-View Sampler's DDIM-25 (cfg 8.5, same seed) within the
  float32 bound of the computation, for 2 and 3 views, random and all_pairs, with regional prompts and on
  ``cpu,cpu``; lcm at 1 and 4 steps equals the pack's MCM. Through the GUIDER + SamplerCustomAdvanced on 0.3.64,
  through the sampler node's ``sampler`` input on 2024-03 (which has no GUIDER sampling).
- Masks, in the same process: a start latent with a noise_mask through core's own mask handling equals the start
  latent where the mask is 0 and the unmasked run where it is 1 (bitwise), and the pack's masked loop within the
  float32 bound (docs/masks.md).
- Through the real servers: the ``sampler`` input with progress and previews on both; on 0.3.64, six core
  samplers x three schedulers run to completion (a non-finite result stops the run with an error), and the
  GUIDER path reports progress and previews.

The float32 bound: the same pack sampler with another ``max_batch`` (other batch sizes, other rounding, the
same mathematics) gives the measured floor; a result is "equal" within 4x max(floor, 16 ulp of the largest
value). The DDIM and Euler updates are the same formula in different coordinates (x/sqrt(1+sigma^2) vs x), so
their rounding differs by about as much as batching's does.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.support.comfy_harness import PACK_ROOT
from tests.support.core_sampling_inprocess import CASES, MASK_CASES
from tests.support.pack_info import api_workflows

pytestmark = pytest.mark.integration
EPS32 = float(torch.finfo(torch.float32).eps)
SAMPLERS = ["euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc", "heun", "lcm"]
SCHEDULERS = ["karras", "normal", "exponential"]


def _bound(facts) -> float:
    return 4.0 * max(facts["floor"], 16 * EPS32 * facts["max_abs"])


# What each ComfyUI checks (one 25-step run of the tiny model takes seconds; CI has two cores): 0.3.64 the
# GUIDER path on every case and every mask case; 2024-03 the sampler-input path (the same core_sample code) on one
# case, one mask case, lcm and context windows.
FACTS = {"0.3.64": ["2v_random", "3v_all_pairs", "3v_random_regional", "2v_random_cpu_cpu", "masks"],
         "2024": ["3v_random_regional", "lcm", "windows", "masks=2v_random"]}


@pytest.fixture(scope="module")
def core_fact_runs(request, tmp_path_factory):
    """Both in-process runs started at once (each keeps about one core busy), collected per version."""
    runs = {}
    for version, cases in FACTS.items():
        try:
            root = request.getfixturevalue("comfyui_2024_source" if version == "2024" else "comfyui_v3_source")
        except pytest.skip.Exception as skipped:
            runs[version] = skipped
            continue
        out = tmp_path_factory.mktemp("core_sampling") / "facts.json"
        process = subprocess.Popen([sys.executable, "-m", "tests.support.core_sampling_inprocess", str(root), str(out),
                                    *cases], cwd=PACK_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))
        runs[version] = (process, out)
    yield runs
    for run in runs.values():
        if isinstance(run, tuple) and run[0].poll() is None:
            run[0].kill()


@pytest.fixture(scope="module", params=["2024", "0.3.64"])
def core_facts(request, core_fact_runs):
    run = core_fact_runs[request.param]
    if isinstance(run, BaseException):
        pytest.skip(str(run))
    process, out = run
    output, _ = process.communicate(timeout=1200)
    assert process.returncode == 0, output[-4000:]
    return request.param, json.loads(out.read_text())


def test_euler_and_ddim_on_cvd_ddim_sigmas_equal_the_pack_sampler(core_facts):
    version, facts = core_facts
    assert sorted(facts["parity"]) == sorted(c for c in FACTS[version] if c in CASES)
    for name, case in facts["parity"].items():
        assert case["guider_api"] == (version != "2024"), (name, case)
        for sampler in [s for s in ("euler", "ddim") if s in case]:
            assert case[f"{sampler}_finite"], (name, sampler)
            assert case[sampler] <= _bound(case), (version, name, sampler, case)
    if version == "0.3.64":
        assert "ddim" in facts["parity"]["2v_random"]


def test_a_wrong_pairing_is_far_outside_the_bound(core_facts):
    """The parity check can fail: 3 views paired by another strategy differ by orders of magnitude more."""
    _, facts = core_facts
    for name, case in facts["parity"].items():
        if name.startswith("3v"):
            assert case["wrong_pairing"] > 100 * _bound(case), (name, case)


def test_lcm_on_mcm_sigmas_equals_the_packs_mcm(core_facts):
    """1 step: the x0 estimate; 4 steps: also the re-noising between steps (the same per-view step noise)."""
    version, facts = core_facts
    if "lcm" not in FACTS[version]:
        pytest.skip(f"lcm parity runs on the other ComfyUI ({[v for v in FACTS if 'lcm' in FACTS[v]][0]}): the same code")
    assert sorted(facts["lcm"]) == ["1", "4"]
    for steps, lcm in facts["lcm"].items():
        assert lcm["lcm"] <= _bound(lcm), (steps, lcm)


def test_context_windows_in_core_samplers_equal_the_pack_sampler(core_facts):
    """Both loops get the denoiser's windows: euler (GUIDER on 0.3.64, the sampler input on 2024) equals the
    pack's DDIM with the same context and FreeNoise; FreeNoise off is a different video (the bound can fail)."""
    version, facts = core_facts
    if "windows" not in FACTS[version]:
        pytest.skip("context windows in core samplers run on the other ComfyUI: the same core_sample code")
    windows = facts["windows"]
    assert windows["guider_api"] == (version != "2024") and windows["finite"] and windows["frames"] == 12
    assert windows["euler"] <= _bound(windows), windows
    assert windows["wrong_noise"] > 100 * _bound(windows), windows


def test_masks_on_the_core_path(core_facts):
    """A start latent with a noise_mask through core's own mask handling (docs/masks.md): mask all 0 gives the start
    latent, all 1 the unmasked run (bitwise); a half mask keeps the other half bitwise and equals the pack's masked
    loop within the float32 bound; every accepted mask form gives the same latent. With regional prompts and on
    cpu,cpu."""
    version, facts = core_facts
    masks = next(c for c in FACTS[version] if c.startswith("masks"))
    assert set(facts["masks"]) == set(masks.split("=")[1].split(",") if "=" in masks else MASK_CASES)
    for name, case in facts["masks"].items():
        flags = ("zeros_equal_start", "ones_equal_unmasked", "half_outside_equal_start", "pack_outside_equal_start")
        for flag in flags:
            assert case[flag], (version, name, flag, case)
        assert case["half_inside_moved"] > 0 and case["unmasked_moved"] > 1e-2, (version, name, case)
        assert case["pack_vs_core_half"] <= _bound(case), (version, name, case)
    assert facts["masks"]["2v_random"]["forms_equal"]


# ------------------------------------------------------------------------------ through the servers

def _two_views(steps=3, frames=6):
    prompt = copy.deepcopy(next(p for n, p, _ in api_workflows() if n == "cvd_two_views"))
    prompt["7"]["inputs"]["steps"] = steps
    for poses in ("5", "6"):
        prompt[poses]["inputs"]["frames"] = frames
    return prompt


def _core_samplers(frames=2):
    prompt = copy.deepcopy(next(p for n, p, _ in api_workflows() if n == "cvd_core_samplers"))
    prompt["5"]["inputs"]["frames"] = frames
    return prompt


def test_sampler_input_runs_with_progress_and_previews(each_comfy_server):
    from tests.integration.test_sampling_nodes import _check_progress_and_previews

    server = each_comfy_server
    prompt = _two_views()
    prompt["20"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    prompt["7"]["inputs"]["sampler"] = ["20", 0]
    prompt["11"]["inputs"]["filename_prefix"] = "cvd_core/sampler_input"
    entry, messages, binaries = server.run_watching(prompt, timeout=600)
    _check_progress_and_previews(messages, binaries, steps=3, frames=6, latent_size=8)
    assert entry["outputs"].get("11")


def test_sampler_input_refuses_recurrence(each_comfy_server):
    prompt = _two_views()
    prompt["20"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    prompt["7"]["inputs"]["sampler"] = ["20", 0]
    prompt["7"]["inputs"]["recurrence"] = 2
    message = each_comfy_server.failure_of(prompt)
    assert "recurrence must be 1 when a core sampler is connected" in message and "got 2" in message, message


def test_guider_reports_progress_and_previews(comfy_server_v3):
    from tests.integration.test_sampling_nodes import _check_progress_and_previews

    prompt = _core_samplers(frames=6)
    prompt["7"]["inputs"]["steps"] = 3
    prompt["15"]["inputs"]["filename_prefix"] = "cvd_core/guider"
    entry, messages, binaries = comfy_server_v3.run_watching(prompt, timeout=600)
    _check_progress_and_previews(messages, binaries, steps=3, frames=6, latent_size=8, node="11")
    assert entry["outputs"].get("15")


def test_core_samplers_and_schedulers_run_to_completion(comfy_server_v3):
    server = comfy_server_v3
    queued = {}
    for sampler in SAMPLERS:
        for scheduler in SCHEDULERS:
            prompt = _core_samplers()
            prompt["7"]["inputs"].update(scheduler=scheduler, steps=3)
            prompt["9"]["inputs"]["sampler_name"] = sampler
            prompt["15"]["inputs"].update(filename_prefix=f"cvd_core/{sampler}_{scheduler}", save_grid=False)
            queued[(sampler, scheduler)] = server.queue(prompt)
    prompt = _core_samplers()  # core's RandomNoise instead of CVD Noise: its own noise, the pairing from its seed
    prompt["8"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}}
    prompt["7"]["inputs"]["steps"] = 3
    prompt["15"]["inputs"].update(filename_prefix="cvd_core/random_noise", save_grid=False)
    queued[("RandomNoise", "karras")] = server.queue(prompt)
    for combo, prompt_id in queued.items():
        entry = server.wait(prompt_id, timeout=600)  # raises with the node's error (a NaN result is one)
        assert entry["outputs"].get("15"), (combo, entry.get("outputs"))


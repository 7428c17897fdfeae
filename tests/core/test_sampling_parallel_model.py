"""The tiny CVD network over two CPU replicas (``cpu,cpu``) and over a gloo worker process.

Tolerance. Splitting a step's rows changes which rows share a denoiser call; the network's batched
kernels then round differently (the per-row maths is the same: pairs stay together, GroupNorm and
the feature cache are per row, and the sums run in the same pair order). Changing ``max_batch`` on
one device perturbs the result in exactly this way, so each case measures that noise floor in
the same run (``max_batch`` 2 vs all rows in one call) and allows ``8 x floor`` plus 16 float32
ulps of the latents' magnitude (the floor can be 0 by chance). Measured on the 2-core VM: the
split differs by 0.7-1.9x the floor (1e-6 to 1e-4); a wrong gather order differs by 4-9.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cvd_core.camera import make_preset_rig
from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
from cvd_core.cvd.network import module_with_feature_cache
from cvd_core.feature_cache import FeatureCacheConfig
from cvd_core.parallel import ThreadedExecutor
from cvd_core.parallel.cluster import WorkerJobError, WorkerPool
from cvd_core.parallel.distributed import DistributedExecutor
from cvd_core.parallel.recipe import RecipeError, build, file_ref, make_recipe, verify
from cvd_core.sampling import DDIMScheduler, initial_noise, sample_multiview
from nodes.sampling import camera_inputs
from tests.core.test_sampling_parallel import ReversedGather

ROOT = Path(__file__).resolve().parents[2]
FRAMES, SIZE, TEXT = 2, 64, 32
FILES = {"unet": ("checkpoints", "tiny_sd15.safetensors"), "motion_module": ("animatediff_models", "mm.ckpt"),
         "cameractrl": ("cvd", "CameraCtrl.ckpt"), "cvd": ("cvd", "CVD.ckpt")}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A ComfyUI-style models folder with the tiny CVD files under their folder names."""
    root = tmp_path_factory.mktemp("models")
    written = write_tiny_cvd_files(root / "written", seed=0, single_file=True)
    for role, (folder, name) in FILES.items():
        (root / folder).mkdir(exist_ok=True)
        shutil.move(written[role], root / folder / name)
    return root


@pytest.fixture(scope="module")
def tiny(models_dir):
    return load_cvd_model(**_paths(models_dir), dtype="fp32", device="cpu")


def _paths(models_dir):
    return {role: str(models_dir / folder / name) for role, (folder, name) in FILES.items()}


def _job(n_views, seed=0):
    rig = make_preset_rig("circle", n_views, FRAMES, SIZE, SIZE)
    plucker, fundamentals = camera_inputs(rig)
    g = torch.Generator().manual_seed(seed)
    cond, uncond = torch.randn(1, 77, TEXT, generator=g), torch.randn(1, 77, TEXT, generator=g)
    mask = torch.zeros(n_views, 1, FRAMES, SIZE // 8, SIZE // 8)
    mask[..., 2:6, 2:6] = 1.0
    entity = (torch.randn(1, 77, TEXT, generator=g), mask)
    x = initial_noise(7, n_views, 4, FRAMES, SIZE // 8, SIZE // 8)
    return x, cond, uncond, plucker, fundamentals, entity


def _runner(model, n_views, strategy, steps=1, guidance=8.5, regional=False, **kw):
    x, cond, uncond, plucker, fundamentals, entity = _job(n_views)

    def run(executor=None, max_batch=None, progress=None):
        return sample_multiview(model, x, cond, uncond if guidance != 1 else None, plucker, fundamentals,
                                DDIMScheduler(num_inference_steps=steps), guidance_scale=guidance,
                                strategy=strategy, seed=7, max_batch=max_batch, executor=executor,
                                regional=[entity] if regional else None, progress=progress, **kw)
    return run


def tolerance(reference, floor_run):
    floor = float((floor_run - reference).abs().max())
    return 8 * floor + 16 * torch.finfo(torch.float32).eps * float(reference.abs().max())


CASES = {  # odd N with CFG and recurrence; all_pairs with the feature cache on cond rows (row_kinds); regional
    "random_odd_cfg_recurrence": dict(n_views=3, strategy="random", steps=2, recurrence=2),
    "all_pairs_feature_cache": dict(n_views=4, strategy="all_pairs", guidance=1.0, cache=True),
}  # (regional rows over ranks: the gloo test below; every strategy and regional: test_sampling_parallel.py)


@pytest.mark.parametrize("case", list(CASES))
def test_cpu_cpu_gives_the_one_device_videos(tiny, case):
    settings = dict(CASES[case])
    model = tiny
    if settings.pop("cache", False):
        model = module_with_feature_cache(tiny, FeatureCacheConfig(strength=0.3, window=2, apply_to="cond"))
    run = _runner(model, **settings)
    reference, floor_run = run(), run(max_batch=2)
    split = run(ThreadedExecutor([model, model]))
    tol = tolerance(reference, floor_run)
    assert float((split - reference).abs().max()) <= tol
    if case == "all_pairs_feature_cache":  # the tolerance is tight enough to catch a wrong gather order
        broken = run(ReversedGather([model, model]), max_batch=4)
        assert float((broken - reference).abs().max()) > 100 * tol


# ------------------------------------------------------------------------------ recipes

def _recipe(models_dir, model, patches=()):
    paths = _paths(models_dir)
    return make_recipe({role: file_ref(folder, name, paths[role]) for role, (folder, name) in FILES.items()},
                       model.dtype, patches=patches, settings={"pixel_band": 3.0})


def test_a_recipe_rebuilds_the_same_model_with_its_patches(models_dir, tiny, tmp_path):
    from nodes.mcm import merged_copy
    from cvd_core.mcm import load_peft_adapter, lora_deltas
    from tests.support.models_mcm import write_tiny_mcm_adapter

    adapter = write_tiny_mcm_adapter(models_dir / "mcm" / "tiny-mcm", cross_attention_dim=TEXT)
    cache = FeatureCacheConfig(strength=0.2, window=3)
    merged, _ = merged_copy(tiny, lora_deltas(*load_peft_adapter(adapter)), 0.7)
    expected = module_with_feature_cache(merged, cache)
    patches = [{"kind": "mcm_lora", "file": file_ref("mcm", "tiny-mcm", adapter), "strength": 0.7},
               {"kind": "feature_cache", "config": {"strength": 0.2, "window": 3}, "target": "layers"}]
    rebuilt = build(_recipe(models_dir, tiny, patches), [tmp_path / "elsewhere", models_dir], "cpu")
    x, cond, _, plucker, fundamentals, _ = _job(2)
    f = torch.stack([fundamentals(0, 1), fundamentals(1, 0)])
    args = (x, torch.tensor(500), cond.expand(2, -1, -1), plucker, f, torch.tensor([1, 0]))
    assert torch.equal(rebuilt.predict_noise(*args), expected.predict_noise(*args))
    assert rebuilt.unet.feature_cache == cache


def test_a_different_or_missing_file_is_named(models_dir, tiny, tmp_path):
    recipe = _recipe(models_dir, tiny)
    recipe["files"]["cvd"]["sha256"] = "0" * 64
    with pytest.raises(RecipeError, match=r"cvd/CVD.ckpt \(cvd\) differs from the server's: sha256 .* here"):
        verify(recipe, [models_dir])
    with pytest.raises(RecipeError, match=r"checkpoints/tiny_sd15.safetensors is not in this worker's model folders"):
        verify(_recipe(models_dir, tiny), [tmp_path])


# ------------------------------------------------------------------------------ gloo ranks

def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(models_dir):
    """A worker pool in this process and one worker process (one CPU thread), torn down by PID; the
    worker proves the pool's token (a token file), as on a real network."""
    port, token = _free_port(), "cluster-test-token-0123456789"
    pool = WorkerPool("127.0.0.1", port, store_port=_free_port(), token=token).start()
    (models_dir / "token").write_text(token)
    log = open(models_dir / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "cvd_core.parallel.worker", "--server", f"127.0.0.1:{port}",
                               "--models", str(models_dir), "--threads", "1", "--name", "test-worker",
                               "--token-file", str(models_dir / "token")],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not pool.workers():
            assert worker.poll() is None and time.monotonic() < deadline, (models_dir / "worker.log").read_text()
            time.sleep(0.1)
        yield pool, worker
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
        worker.wait(timeout=30)
        log.close()
        pool.stop()


def _port_closed(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


def _idle(pool, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(w.state == "idle" for w in pool.workers()):
            return True
        time.sleep(0.05)
    return False


def test_two_gloo_ranks_give_the_one_device_videos_and_a_bad_file_is_refused(cluster, models_dir, tiny):
    pool, _ = cluster
    run = _runner(tiny, n_views=3, strategy="all_pairs", regional=True)
    reference, floor_run = run(), run(max_batch=2)
    executor = DistributedExecutor([tiny], pool, _recipe(models_dir, tiny), timeout_s=120)
    assert _idle(pool)
    split = run(executor)
    assert executor.stats["workers"] == 1 and executor.stats["iterations"] == 1
    assert pool.store is None and _port_closed(pool.store_port)  # the job's store lived during the job only
    assert float((split - reference).abs().max()) <= tolerance(reference, floor_run)
    # 3 pairs x 3 branches = 9 units of 2 rows, split 5 / 4: the worker computes 8 rows; it gets the
    # 3 views' latents and sends its 8 rows back (fp32), plus a header and its row plan (int64)
    view_bytes = 4 * FRAMES * (SIZE // 8) ** 2 * 4
    assert 0 < executor.stats["iteration_bytes"][0] - (3 + 8) * view_bytes < 1024

    bad = _recipe(models_dir, tiny)
    bad["files"]["unet"]["sha256"] = "f" * 64
    assert _idle(pool)
    with pytest.raises(WorkerJobError, match=r"worker rank 1 \('test-worker'.*refused the job: "
                                             r"checkpoints/tiny_sd15.safetensors \(unet\) differs"):
        run(DistributedExecutor([tiny], pool, bad, timeout_s=120))


def test_windows_on_a_gloo_worker_give_the_one_device_videos(cluster, models_dir, tiny):
    pool, _ = cluster
    run = _window_runner(tiny, steps=1)
    reference, floor_run = run(), run(max_batch=2)
    executor = DistributedExecutor([tiny], pool, _recipe(models_dir, tiny), timeout_s=120)
    assert _idle(pool)
    split = run(executor)
    windows = len(_context_windows(12))
    assert executor.stats["workers"] == 1 and executor.stats["iterations"] == windows
    assert float((split - reference).abs().max()) <= tolerance(reference, floor_run)


def _context_windows(frames):
    from cvd_core.sampling.context import ContextOptions
    return ContextOptions(8, 2, "looped_uniform", closed_loop=True).windows(frames, 0)


def test_a_hung_worker_times_out_with_the_step_and_rejoins(cluster, models_dir, tiny):
    pool, worker = cluster
    run = _runner(tiny, n_views=2, strategy="random", steps=30)  # CFG: one branch's rows on each rank
    assert _idle(pool)

    class Freeze:
        """Stops the worker (SIGSTOP) once the job is under way."""
        done = 0

        def start(self, total):
            pass

        def check(self):
            pass

        def advance(self, n=1):
            self.done += n
            if self.done == 2:
                os.kill(worker.pid, signal.SIGSTOP)

    executor = DistributedExecutor([tiny], pool, _recipe(models_dir, tiny), timeout_s=3)
    started = time.monotonic()
    with pytest.raises(WorkerJobError, match=r"worker rank 1 \('test-worker'.* failed at step \d+/30 \(timestep "
                                             r"\d+\): no answer within 3 s"):
        run(executor, progress=Freeze())
    assert time.monotonic() - started < 60
    os.kill(worker.pid, signal.SIGCONT)
    assert _idle(pool), "the worker did not come back after the failed job"
    again = DistributedExecutor([tiny], pool, _recipe(models_dir, tiny), timeout_s=120)
    _runner(tiny, n_views=2, strategy="random")(again)
    assert again.stats["workers"] == 1  # the next job used it again


# ------------------------------------------------------------------------------ context windows

def _window_runner(model, frames=12, steps=2):
    """2 views with CFG over looped windows of 8 (closed): wrapping windows, frame 0 inside a window."""
    from cvd_core.sampling.context import ContextOptions
    from cvd_core.sampling.window_inputs import WindowCameras

    rig = make_preset_rig("circle", 2, frames, SIZE, SIZE)
    _, fundamentals = camera_inputs(rig, maps=False)
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(1, 77, TEXT, generator=g), torch.randn(1, 77, TEXT, generator=g)
    x = initial_noise(7, 2, 4, frames, SIZE // 8, SIZE // 8)
    context = ContextOptions(8, 2, "looped_uniform", closed_loop=True)

    def run(executor=None, max_batch=None):
        return sample_multiview(model, x, cond, uncond, None, fundamentals, DDIMScheduler(num_inference_steps=steps),
                                guidance_scale=8.5, seed=7, max_batch=max_batch, executor=executor,
                                context=context, cameras=WindowCameras.from_rig(rig))
    return run


def test_windows_on_cpu_cpu_give_the_one_device_videos(tiny):
    run = _window_runner(tiny)
    reference, floor_run = run(), run(max_batch=2)
    assert torch.equal(reference, run())  # the same seed gives the same video
    split = run(ThreadedExecutor([tiny, tiny]))
    assert float((split - reference).abs().max()) <= tolerance(reference, floor_run)

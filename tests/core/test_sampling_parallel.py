"""The sampler over several devices (``cvd_core.parallel``): the split, the executors, the devices string.

With the row-wise fake denoiser of ``test_sampling_sampler`` every row's output is independent of
which rows share its call, so any executor must reproduce the single-device result bit for bit;
a wrong gather order (or a lost, doubled or misplaced row) changes the sums. The real network's
tolerance is derived in ``test_sampling_parallel_model.py``.
"""

import threading

import pytest
import torch

from cvd_core.parallel import DeviceSpecError, ThreadedExecutor, parse_devices, replica_on
from cvd_core.parallel.distributed import decode_plans, encode_plans, transfer_bytes
from cvd_core.progress import CallbackProgress
from cvd_core.sampling import DDIMScheduler, pair_schedule, plan_calls, sample_multiview
from cvd_core.sampling.batching import plan_calls_split
from tests.core.test_sampling_sampler import (D, FR, H, W, KindRecordingDenoiser, MixingDenoiser, _fundamental,
                                              _inputs)


def _sample(n_views, executor=None, denoiser=None, **kw):
    x, cond, uncond, plucker = _inputs(n_views)
    kw.setdefault("max_batch", 3 if n_views > 1 else 1)
    return sample_multiview(denoiser or MixingDenoiser(), x, cond, uncond, plucker,
                            _fundamental if n_views > 1 else None, DDIMScheduler(num_inference_steps=3),
                            executor=executor, **kw)


def _entity(n_views):
    g = torch.Generator().manual_seed(9)
    mask = torch.zeros(n_views, 1, FR, H, W)
    mask[..., 1:3, 1:4] = 1.0
    return [(torch.randn(1, 77, D, generator=g), mask)]


CASES = [  # (views, strategy, extra sampler arguments): every pairing, odd N, CFG on/off, recurrence, regional
    (4, "random", dict(recurrence=2)),
    (5, "random", dict(guidance_scale=1.0, uncond=None)),
    (5, "all_pairs", dict()),
    (3, "fixed", dict(recurrence=3)),
    (7, "random", dict(partitions=2)),
    (4, "all_pairs", dict(regional="entity")),
    (1, "random", dict(recurrence=2)),
]


@pytest.mark.parametrize("n_views,strategy,extra", CASES)
@pytest.mark.parametrize("parts", [2, 3])
def test_threads_reproduce_one_device_bit_for_bit(n_views, strategy, extra, parts):
    extra = dict(extra)
    if extra.pop("regional", None):
        extra["regional"] = _entity(n_views)
    if extra.pop("uncond", 0) is None:
        x, cond, _, plucker = _inputs(n_views)
        run = lambda ex: sample_multiview(MixingDenoiser(), x, cond, None, plucker, _fundamental,  # noqa: E731
                                          DDIMScheduler(num_inference_steps=3), strategy=strategy, seed=5,
                                          max_batch=3, executor=ex, **extra)
    else:
        run = lambda ex: _sample(n_views, ex, strategy=strategy, seed=5, **extra)  # noqa: E731
    reference = run(None)
    split = run(ThreadedExecutor([MixingDenoiser() for _ in range(parts)]))
    assert torch.equal(split, reference)


class ReversedGather(ThreadedExecutor):
    """A deliberate bug: the participants' outputs are handed back in reverse participant order."""

    def run(self, plans, latents, iteration, progress):
        outputs = list(super().run(plans, latents, iteration, progress))
        sizes = [len(p) for p in plans]
        blocks, start = [], 0
        for size in sizes:
            blocks.append(outputs[start:start + size])
            start += size
        calls = [plan for block in blocks for plan, _ in block]
        values = [out for block in reversed(blocks) for _, out in block]
        return iter(zip(calls, values))


def test_a_wrong_gather_order_is_caught():
    reference = _sample(5, strategy="all_pairs", seed=5)
    # the bug only shows where the participants' calls differ in shape or content, which they do here
    broken = _sample(5, ReversedGather([MixingDenoiser(), MixingDenoiser()]), strategy="all_pairs", seed=5,
                     max_batch=4)
    assert (broken - reference).abs().max() > 1e-2


def test_each_replica_runs_its_share_and_row_kinds_reach_it():
    x, cond, uncond, plucker = _inputs(4)
    replicas = [KindRecordingDenoiser(uncond[0]) for _ in range(2)]
    threads = []
    for replica in replicas:
        original = replica.predict_noise

        def recording(*args, _original=original, **kwargs):
            threads.append(threading.current_thread().name)
            return _original(*args, **kwargs)

        replica.predict_noise = recording
    entity = _entity(4)
    out = sample_multiview(None, x, cond, uncond, plucker, _fundamental, DDIMScheduler(num_inference_steps=2),
                           strategy="all_pairs", max_batch=4, regional=entity, executor=ThreadedExecutor(replicas))
    plain = sample_multiview(MixingDenoiser(), x, cond, uncond, plucker, _fundamental,
                             DDIMScheduler(num_inference_steps=2), strategy="all_pairs", max_batch=4, regional=entity)
    assert torch.equal(out, plain)
    rows = [sum(c["rows"] for c in r.calls) for r in replicas]
    assert rows[0] == rows[1] == 6 * 3 * 2 * 2 // 2  # 6 pairs x 3 branches x 2 rows x 2 steps, halved
    assert all(name.startswith("cvd-rows-") for name in threads)


def test_balanced_split_keeps_pair_order_and_every_row_once():
    pairs = pair_schedule(7, "all_pairs")
    branches = (0, 1, 2)
    whole = [(r.pair, r.view, r.branch) for c in plan_calls(pairs, branches, 6) for r in c.rows]
    for parts in (1, 2, 3, 5, 70):
        split = plan_calls_split(pairs, branches, 6, parts)
        assert len(split) == parts
        rows = [sum(len(c.rows) for c in part) for part in split]
        assert max(rows) - min(rows) <= 2  # balanced to one unit (a pair for one branch)
        seen = [(r.pair, r.view, r.branch) for part in split for c in part for r in c.rows]
        assert sorted(seen) == sorted(whole)
        pair_sequence = [r.pair for part in split for c in part for r in c.rows]
        assert pair_sequence == sorted(pair_sequence)  # devices in order visit the pairs in order
        for part in split:
            for c in part:
                assert len(c.rows) <= 6
                assert all(c.partner[p] == n and c.rows[p].branch == c.rows[n].branch for n, p in enumerate(c.partner))
    assert plan_calls_split(pairs, branches, 6, 1) == [plan_calls(pairs, branches, 6)]
    with pytest.raises(ValueError, match="max_batch must be at least 2"):
        plan_calls_split(pairs, branches, 1, 3)


def test_progress_counts_every_call_and_a_cancel_stops_all_threads():
    progress = CallbackProgress(lambda done, total: None)
    executor = ThreadedExecutor([MixingDenoiser(), MixingDenoiser()])
    _sample(4, executor, recurrence=2, max_batch=2, progress=progress)
    calls = sum(len(d.module.calls) for d in executor.denoisers)
    assert progress.total == progress.done == calls == 5 * 4  # 5 iterations x (2 pairs x 2 branches) per iteration

    class Cancelled(Exception):
        pass

    def cancel_at(done, total):
        if done == 3:
            raise Cancelled()

    replicas = [MixingDenoiser(), MixingDenoiser()]
    with pytest.raises(Cancelled):
        _sample(4, ThreadedExecutor(replicas), recurrence=2, max_batch=2, progress=CallbackProgress(cancel_at))
    assert sum(len(r.calls) for r in replicas) < 20  # stopped early
    assert not [t for t in threading.enumerate() if t.name.startswith("cvd-rows-")]  # every device thread joined


def test_a_failing_replica_names_its_device():
    class Broken(MixingDenoiser):
        def predict_noise(self, *args):
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match=r"denoiser on cpu \(device 2 of 2\) failed: RuntimeError: out of memory"):
        _sample(4, ThreadedExecutor([MixingDenoiser(), Broken()]), strategy="all_pairs")


def test_cpu_threads_are_shared_between_cpu_replicas_and_restored():
    seen = []

    class Recording(MixingDenoiser):
        def predict_noise(self, *args):
            seen.append(torch.get_num_threads())
            return super().predict_noise(*args)

    before = torch.get_num_threads()
    _sample(4, ThreadedExecutor([Recording(), Recording()]), strategy="all_pairs")
    assert seen and set(seen) == {max(1, before // 2)}
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------ devices string

def test_devices_string_forms():
    assert parse_devices("").devices == () and not parse_devices("").use_workers
    assert parse_devices(None).devices == ()
    assert [str(d) for d in parse_devices(" CPU , cpu ", cuda_count=0).devices] == ["cpu", "cpu"]
    two = parse_devices("cuda:0,cuda:1", cuda_count=2).devices
    assert [str(d) for d in two] == ["cuda:0", "cuda:1"]
    assert [str(d) for d in parse_devices("all", cuda_count=3).devices] == ["cuda:0", "cuda:1", "cuda:2"]
    assert [str(d) for d in parse_devices("cuda", cuda_count=1).devices] == ["cuda:0"]
    plan = parse_devices("workers", cuda_count=0)
    assert plan.use_workers and plan.local_devices(torch.device("cpu")) == [torch.device("cpu")]
    assert parse_devices("cpu,workers", cuda_count=0).use_workers


@pytest.mark.parametrize("text,count,message", [
    ("gpu0", 0, "unknown device 'gpu0': use cpu, cuda:N, mps, all"),
    ("cuda:0", 0, "'cuda:0' needs a CUDA GPU, but torch sees none"),
    ("all", 0, "'all' means every CUDA GPU, but torch sees none"),
    ("cuda:2", 2, "'cuda:2' does not exist: torch sees 2 GPU\\(s\\), cuda:0 to cuda:1"),
    ("cuda:0,cuda:0", 2, "lists cuda:0 twice: one replica per GPU \\(only cpu may repeat\\)"),
    ("all,cuda:1", 2, "lists cuda:1 twice"),
    ("cpu,,cpu", 0, "has an empty entry"),
    ("cuda:x", 1, "write cuda:N with N a GPU index"),
    ("workers,workers", 0, "names 'workers' twice"),
])
def test_devices_string_errors_say_why(text, count, message):
    with pytest.raises(DeviceSpecError, match=message):
        parse_devices(text, cuda_count=count)


# ------------------------------------------------------------------------------ replicas, wire format

def test_replica_on_copies_to_the_device_and_keeps_ties():
    module = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    module[1].weight = module[0].weight  # a tied weight
    module.note = {"feature_cache": "kept"}
    assert replica_on(module, "cpu") is module  # the device it is on: the module itself
    copy = replica_on(module, "meta")
    assert copy[0].weight.device.type == "meta" and copy[1].weight is copy[0].weight
    assert copy.note == module.note and module[0].weight.device.type == "cpu"


def test_row_plans_survive_the_wire():
    pairs = pair_schedule(5, "random", 0, 3)
    plans = plan_calls_split(pairs, (0, 1), 4, 3)
    decoded = decode_plans(encode_plans(plans), 3)
    for part, back in zip(plans, decoded):
        assert [[(r.view, r.branch) for r in c.rows] for c in part] == [[(r.view, r.branch) for r in c.rows]
                                                                        for c in back]
        assert [c.partner for c in part] == [c.partner for c in back]
    single = decode_plans(encode_plans([plan_calls([], (0, 1), 2)]), 1)
    assert single[0][0].partner is None and [r.branch for r in single[0][0].rows] == [0, 1]
    with pytest.raises(ValueError, match="too many"):
        decode_plans(torch.cat([encode_plans(plans), torch.zeros(1, dtype=torch.int64)]), 3)


def test_bytes_per_iteration_formula():
    # 16 views of 16 frames at 256x256 (latent 4 x 16 x 32 x 32), fp16, one worker with 16 of 32 rows
    view = 4 * 16 * 32 * 32
    assert transfer_bytes(16, view, 2, [16], plan_words=100) == 8 * 104 + 16 * view * 2 + 16 * view * 2


def test_a_denoiser_that_draws_per_call_is_refused():
    drawing = MixingDenoiser()
    drawing.first_frame_slope = "random"  # CVDModel's per-call random slope of frame 0's pseudo lines
    with pytest.raises(ValueError, match="first_frame_slope 'random' draws a slope per denoiser call"):
        _sample(4, ThreadedExecutor([drawing, drawing]))

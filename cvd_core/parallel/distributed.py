"""Sampler rows across machines on ``torch.distributed``: rank 0 (the server) and worker ranks.

Rank 0 is the sampler server itself; it keeps the latents, runs its own share of the rows on its
local devices (threads, as ``threaded.py``) and does the averaging, guidance and scheduler update.
Worker ranks only run denoiser calls. Per job (one ``sample_multiview`` run):

- once, rank 0 broadcasts the run's inputs: text embeddings ``[branches, V, L, D]`` (fp32), the
  Plücker maps ``[V, 6, F, H, W]`` in the model dtype, and the F matrices of every pair the run
  uses, both orientations ``[P, 2, F, 3, 3]`` (fp32), so every rank builds bit-identical inputs;
- per iteration (a step, or a recurrence iteration of it; with context windows, per window), rank 0
  broadcasts a header (4 int64), the window's frames and the row plan of every worker (int64; a few
  hundred bytes) and the latents ``[V, C, F, h, w]`` (the window's frames) in the model dtype; with
  windows the once-per-job maps are the cameras ``[V, F, 25]`` (float64), from which every rank builds
  each window's Plücker maps; each worker sends back the output of each of its calls ``[rows, C, F, h, w]``
  (model dtype), which rank 0 adds in plan order, exactly as its own outputs;
- at the end rank 0 broadcasts an end header and every rank destroys the process group.

Bytes per iteration with W workers and R_w rows on worker w, latent ``C x F x h x w`` of s bytes:
``W * (32 + plan + V*C*F*h*w*s) + sum_w R_w*C*F*h*w*s`` (``transfer_bytes``).

A worker that dies or stops answering makes rank 0's receive fail (a closed connection at once,
a hung worker after the timeout); the job then fails with ``WorkerJobError`` naming the rank, the
worker and the step, the group is destroyed, and the server keeps running: the next job uses
the workers still connected, or runs locally.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..sampling.batching import CallPlan, Row, plan_calls_split
from ..sampling.executor import Denoiser, Iteration, RowExecutor, RowInputs
from ..sampling.window_inputs import WindowCameras, WindowFundamentals
from .cluster import LOG, Worker, WorkerJobError, WorkerPool
from .threaded import CpuThreads, check_deterministic, device_error, local_lane, run_lanes

OP_END, OP_ITERATE = 0, 1
HEADER = 4  # opcode, timestep, plan length, step index


# ------------------------------------------------------------------------------ wire format

def encode_plans(plans: Sequence[Sequence[CallPlan]]) -> torch.Tensor:
    """Row plans of several ranks as one int64 tensor: per rank, its calls' rows and partners."""
    words: List[int] = []
    for calls in plans:
        words.append(len(calls))
        for call in calls:
            words += [len(call.rows), 0 if call.partner is None else 1]
            for row in call.rows:
                words += [row.view, row.branch]
            if call.partner is not None:
                words += list(call.partner)
    return torch.tensor(words, dtype=torch.int64)


def decode_plans(words: torch.Tensor, ranks: int) -> List[List[CallPlan]]:
    values = words.tolist()
    position = 0
    out: List[List[CallPlan]] = []
    for _ in range(ranks):
        calls = []
        n_calls = values[position]
        position += 1
        for _ in range(n_calls):
            n_rows, has_partner = values[position], values[position + 1]
            position += 2
            rows = [Row(values[position + 2 * k], values[position + 2 * k + 1], None) for k in range(n_rows)]
            position += 2 * n_rows
            partner = None
            if has_partner:
                partner = values[position:position + n_rows]
                position += n_rows
            calls.append(CallPlan(rows, partner))
        out.append(calls)
    if position != len(values):
        raise ValueError(f"row plan has {len(values) - position} words too many")
    return out


def transfer_bytes(n_views: int, view_numel: int, element_size: int, remote_rows: Sequence[int],
                   plan_words: int = 0) -> int:
    """Bytes rank 0 sends and receives in one iteration (see the module doc)."""
    workers = len(remote_rows)
    return workers * (8 * (HEADER + plan_words) + n_views * view_numel * element_size) \
        + sum(remote_rows) * view_numel * element_size


def run_bytes(texts: torch.Tensor, plucker: torch.Tensor, fmats: torch.Tensor, workers: int) -> int:
    """Bytes rank 0 sends once per job (the run's inputs) to ``workers`` workers."""
    return workers * sum(t.numel() * t.element_size() for t in (texts, plucker, fmats))


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return value


class PairTable:
    """F matrices of the run's pairs, both orientations, looked up like ``fundamentals(i, j)``."""

    def __init__(self, pairs: Sequence[Tuple[int, int]], mats: torch.Tensor):
        self.index = {(int(i), int(j)): (k, 0) for k, (i, j) in enumerate(pairs)}
        self.index.update({(int(j), int(i)): (k, 1) for k, (i, j) in enumerate(pairs)})
        self.mats = mats

    def __call__(self, i: int, j: int) -> torch.Tensor:
        k, side = self.index[(i, j)]
        return self.mats[k, side]


def run_tensors(rows: RowInputs, run_pairs: Sequence[Tuple[int, int]], transfer_dtype: torch.dtype):
    """The run's inputs as tensors: ``(branches, texts, plucker, fmats)``.

    With context windows (``rows.cameras`` set, no full-length maps) the third tensor is the cameras
    instead, ``[V, F, 25]`` float64 (K's 9 then c2w's 16 entries per frame): every rank builds each
    window's Plücker maps from them with the same code (``WindowCameras.plucker``), so the maps agree
    bit for bit and only poses cross the wire.
    """
    branches = [b for b, t in enumerate(rows.texts) if t is not None]
    texts = torch.stack([rows.texts[b].to(torch.float32) for b in branches]).contiguous()
    if rows.plucker is None:
        cams = rows.cameras
        plucker = torch.cat([cams.K.flatten(2), cams.c2w.flatten(2)], dim=2).to(torch.float64).contiguous()
    else:
        plucker = rows.plucker.to(transfer_dtype).contiguous()
    if run_pairs:
        fmats = torch.stack([torch.stack([rows.fundamentals(i, j), rows.fundamentals(j, i)])
                             for i, j in run_pairs]).to(torch.float32).contiguous()
    else:
        fmats = torch.zeros(0, 2, plucker.shape[1 if rows.plucker is None else 2], 3, 3)
    return branches, texts, plucker, fmats


def _window_cameras(packed: torch.Tensor, size: Sequence[int]) -> WindowCameras:
    """``WindowCameras`` from ``run_tensors``' packed ``[V, F, 25]`` cameras and ``(width, height)``."""
    views, frames = packed.shape[:2]
    return WindowCameras(packed[..., :9].reshape(views, frames, 3, 3), packed[..., 9:].reshape(views, frames, 4, 4),
                         int(size[0]), int(size[1]))


def window_words(window: Optional[Sequence[int]]) -> List[int]:
    """The iteration's context window ahead of the row plans: ``[n, frames...]`` (``[0]``: the whole clip)."""
    return [0] if window is None else [len(window)] + [int(f) for f in window]


# ------------------------------------------------------------------------------ rank 0

class DistributedExecutor(RowExecutor):
    """Rank 0: the local denoisers (threads) plus the pool's idle workers, a fresh group per job.

    With no idle worker at ``begin`` the run is local (a log line says so). ``recipe`` describes
    the model for the workers (``recipe.py``): a dict, or a callable made to build it only when
    workers take part. ``stats`` holds per-job figures: workers, bytes
    once and per iteration, and seconds spent in rank 0's broadcasts.
    """

    def __init__(self, denoisers: Sequence, pool: WorkerPool, recipe: dict, timeout_s: float = 600.0,
                 load_timeout_s: float = 600.0, backend: Optional[str] = None, max_workers: Optional[int] = None,
                 default_device: torch.device = torch.device("cpu")):
        self._local = [d if isinstance(d, Denoiser) else Denoiser(d, default_device) for d in denoisers]
        if not self._local:
            raise ValueError("rank 0 needs at least one local denoiser")
        self.pool = pool
        self.recipe = recipe
        self.timeout_s = float(timeout_s)
        self.load_timeout_s = float(load_timeout_s)
        self.backend = backend
        self.max_workers = max_workers
        self.workers: List[Worker] = []
        self.parts = len(self._local)
        self.cpu_threads = CpuThreads(sum(d.device.type == "cpu" for d in self._local))
        self.group_open = False
        self._clean = True
        self._waiting_rank: Optional[int] = None
        self.backend_name = "gloo"
        self.stats: Dict[str, object] = {}
        self.transfer_dtype = self._local[0].dtype

    @property
    def denoisers(self) -> List[Denoiser]:
        return list(self._local)

    def plan(self, pairs, branches, max_batch):
        return plan_calls_split(pairs, branches, max_batch, self.parts)

    # -- job start -------------------------------------------------------------------------------

    def _backend(self) -> str:
        if self.backend:
            return self.backend
        local_cuda = self._local[0].device.type == "cuda"
        remote_cuda = all(w.device.startswith("cuda") for w in self.workers)
        return "nccl" if local_cuda and remote_cuda and torch.distributed.is_nccl_available() else "gloo"

    def _comm_device(self) -> torch.device:
        return self._local[0].device if self.backend_name == "nccl" else torch.device("cpu")

    def begin(self, rows, run_pairs, latents) -> None:
        check_deterministic(self._local)
        super().begin(rows, run_pairs, latents)
        for d in self._local:
            if d.dtype != self.transfer_dtype:
                raise ValueError(f"local replicas must share one dtype, got {self.transfer_dtype} and {d.dtype}")
        self.workers = self.pool.claim(self.max_workers)
        self._clean = True
        self.stats = {"workers": len(self.workers), "iterations": 0, "iteration_bytes": [], "broadcast_s": 0.0}
        if not self.workers:
            LOG.info("cvd-multiview: no idle sampler worker connected: this job runs on the local device(s) only")
            self.parts = len(self._local)
            self.cpu_threads.begin()
            return
        try:
            self._start_job(rows, run_pairs, latents)
        except BaseException:
            self._close_group()
            self.pool.release(self.workers)
            self.workers = []
            raise
        self.parts = len(self._local) + len(self.workers)
        self.cpu_threads.begin()

    def _start_job(self, rows: RowInputs, run_pairs, latents: torch.Tensor) -> None:
        import torch.distributed as dist

        self.backend_name = self._backend()
        branches, texts, plucker, fmats = run_tensors(rows, run_pairs, self.transfer_dtype)
        job_id = self.pool.new_job_id()
        world = 1 + len(self.workers)
        shapes = {"texts": list(texts.shape), "plucker": list(plucker.shape), "fmats": list(fmats.shape),
                  "latents": list(latents.shape)}
        cameras = None if rows.plucker is not None else [rows.cameras.width, rows.cameras.height]
        recipe = self.recipe() if callable(self.recipe) else self.recipe  # hashing files only when workers join
        offers = [{"type": "offer", "job": job_id, "rank": rank, "world_size": world, "backend": self.backend_name,
                   "store_port": self.pool.store_port, "timeout_s": self.timeout_s, "recipe": recipe,
                   "dtype": str(self.transfer_dtype).replace("torch.", ""), "branches": branches,
                   "pairs": [list(p) for p in run_pairs], "shapes": shapes, "cameras": cameras}
                  for rank in range(1, world)]
        started = time.perf_counter()
        self.pool.open_job(job_id, self.workers, offers, self.load_timeout_s)
        from torch.distributed import PrefixStore
        if self.backend_name == "nccl":  # NCCL binds each rank to its current CUDA device
            torch.cuda.set_device(self._local[0].device)
        try:
            dist.init_process_group(self.backend_name, store=PrefixStore(self.pool.store_prefix, self.pool.store), rank=0,
                                    world_size=world, timeout=timedelta(seconds=self.timeout_s))
        except Exception as exc:  # a worker that left between 'start' and joining, or a network problem
            raise WorkerJobError(f"the workers did not join the job's process group ({self.backend_name}): {exc}; "
                                 f"workers: {'; '.join(w.label(r) for r, w in enumerate(self.workers, 1))}") from None
        self.group_open = True
        self.job_id = job_id
        device = self._comm_device()
        try:
            for tensor in (texts, plucker, fmats):
                dist.broadcast(tensor.to(device), src=0)
        except RuntimeError as exc:
            raise WorkerJobError(f"sending the run's inputs to the workers failed: {exc}") from None
        self.stats.update(setup_s=time.perf_counter() - started, run_bytes=run_bytes(texts, plucker, fmats, world - 1),
                          backend=self.backend_name)
        LOG.info("cvd-multiview: job %s on %d local device(s) + %d worker(s) (%s): %s", job_id, len(self._local),
                 len(self.workers), self.backend_name, ", ".join(w.label(r) for r, w in enumerate(self.workers, 1)))

    # -- iterations ------------------------------------------------------------------------------

    def run(self, plans, latents, iteration: Iteration, progress):
        progress.check()
        n_local = len(self._local)
        lanes = [local_lane(self, d, plans[p], latents, iteration.timestep, self.cpu_threads)
                 for p, d in enumerate(self._local)]
        if self.workers:
            self._send_iteration(plans[n_local:], latents, iteration)
            lanes += [None] * len(self.workers)
            lanes[n_local] = self._remote_lane(plans[n_local:], latents, iteration)
            # one lane receives for every worker (one thread drives the group), rank by rank: its
            # outputs fill the first worker's slot in rank-major order, which is the plan order
            merged = [plans[p] for p in range(n_local)] + [sum(plans[n_local:], [])] + \
                     [[] for _ in range(len(self.workers) - 1)]
            yield from run_lanes(lanes, merged, progress, self._describe(iteration, plans))
        else:
            yield from run_lanes(lanes, plans, progress, device_error(self._local))

    def _send_iteration(self, remote: List[List[CallPlan]], latents: torch.Tensor, iteration: Iteration) -> None:
        import torch.distributed as dist

        words = torch.cat([torch.tensor(window_words(iteration.window), dtype=torch.int64), encode_plans(remote)])
        device = self._comm_device()
        header = torch.tensor([OP_ITERATE, iteration.timestep, words.numel(), iteration.step], dtype=torch.int64)
        started = time.perf_counter()
        try:
            dist.broadcast(header.to(device), src=0)
            dist.broadcast(words.to(device), src=0)
            dist.broadcast(latents.to(device, self.transfer_dtype).contiguous(), src=0)
        except RuntimeError as exc:
            self._clean = False
            raise self._failure(iteration, None, exc) from None
        self.stats["broadcast_s"] += time.perf_counter() - started
        view_numel = latents[0].numel()
        element = torch.empty((), dtype=self.transfer_dtype).element_size()
        remote_rows = [sum(len(c.rows) for c in calls) for calls in remote]
        self.stats["iterations"] += 1
        self.stats["iteration_bytes"].append(transfer_bytes(latents.shape[0], view_numel, element, remote_rows,
                                                            words.numel()))

    def _remote_lane(self, remote: List[List[CallPlan]], latents: torch.Tensor, iteration: Iteration):
        import torch.distributed as dist

        device = self._comm_device()
        view_shape = tuple(latents.shape[1:])
        timeout = timedelta(seconds=self.timeout_s)

        def lane(stopped):
            pending = []
            for rank, calls in enumerate(remote, start=1):
                for k, call in enumerate(calls):
                    buffer = torch.empty((len(call.rows),) + view_shape, dtype=self.transfer_dtype, device=device)
                    pending.append((rank, buffer, dist.irecv(buffer, src=rank, tag=k)))
            # Never stops early (``stopped`` is ignored): every posted receive is waited for, so a
            # cancel leaves the group in step and the job can still end cleanly.
            for rank, buffer, work in pending:
                self._waiting_rank = rank
                try:
                    work.wait(timeout)
                except BaseException:
                    self._clean = False
                    raise
                yield buffer.to(latents.device, torch.float32)
            self._waiting_rank = None
        return lane

    def _describe(self, iteration: Iteration, plans):
        n_local = len(self._local)

        def describe(p: int, exc: BaseException) -> BaseException:
            if p < n_local:
                return device_error(self._local)(p, exc)
            return self._failure(iteration, self._waiting_rank, exc)
        return describe

    def _failure(self, iteration: Iteration, rank: Optional[int], exc: BaseException) -> WorkerJobError:
        """The error of a failed job: which worker (by rank, name, host), at which step, and why."""
        text = str(exc)
        suspects = list(enumerate(self.workers, 1)) if rank is None else [(rank, self.workers[rank - 1])]
        deadline = time.monotonic() + 1.0  # the control connection may close a moment after the data one
        while time.monotonic() < deadline and "Timed out" not in text and \
                not any(self.pool.state_of(w) == "gone" for _, w in suspects):
            time.sleep(0.02)
        gone = [(r, w) for r, w in suspects if self.pool.state_of(w) == "gone"]
        if gone:
            suspects, cause = gone, "the worker process ended or lost its connection"
        elif "Timed out" in text or "timeout" in text.lower():
            cause = f"no answer within {self.timeout_s:.0f} s (CVD_DIST_TIMEOUT)"
        else:
            cause = "a transport error"
        who = " or ".join(w.label(r) for r, w in suspects)
        return WorkerJobError(f"{who} failed at {iteration.describe()}: {cause} ({type(exc).__name__}: "
                              f"{text.strip()[:300]}). The job was stopped; the server keeps running and the next "
                              "job uses the workers still connected (or runs locally).")

    # -- job end ---------------------------------------------------------------------------------

    def end(self, failed: bool) -> None:
        self.cpu_threads.end()
        if not self.workers:
            return
        if self.group_open and self._clean:  # also after a cancel: the remote lane drained the iteration
            import torch.distributed as dist
            try:
                dist.broadcast(torch.tensor([OP_END, 0, 0, 0], dtype=torch.int64).to(self._comm_device()), src=0)
            except RuntimeError as exc:
                LOG.warning("cvd-multiview: ending job %s: %s", getattr(self, "job_id", "?"), exc)
        self._close_group()
        # a clean end: the workers report back at once; after a failure they may need the timeout
        self.pool.release(self.workers, wait_s=10.0 if self._clean else 2.0)
        self.workers = []
        self.parts = len(self._local)

    def _close_group(self) -> None:
        import torch.distributed as dist
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as exc:  # a broken group still has to go
                LOG.warning("cvd-multiview: destroying the process group: %s", exc)
        self.group_open = False
        self.pool.close_store()  # the store lives during the job only


# ------------------------------------------------------------------------------ worker ranks

def serve_job(offer: dict, model, store, log=LOG) -> Dict[str, object]:
    """A worker's part of one job (after ``start``): join the group, run its calls, leave.

    ``store``: a TCPStore client on the server's job store; its keys are under ``offer["store_prefix"]``
    (random per job, sent with ``start``). Returns per-job figures.
    """
    import torch.distributed as dist
    from torch.distributed import PrefixStore

    rank, world = int(offer["rank"]), int(offer["world_size"])
    backend = offer["backend"]
    dtype = _dtype(offer["dtype"])
    denoiser = Denoiser(model, torch.device("cpu"))
    if denoiser.dtype != dtype:
        raise RuntimeError(f"the worker's model is {denoiser.dtype} but the job runs in {dtype}")
    comm = denoiser.device if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(comm)
    shapes = offer["shapes"]
    dist.init_process_group(backend, store=PrefixStore(offer["store_prefix"], store), rank=rank,
                            world_size=world, timeout=timedelta(seconds=float(offer["timeout_s"])))
    stats = {"iterations": 0, "calls": 0, "compute_s": 0.0}
    try:
        texts = torch.empty(shapes["texts"], dtype=torch.float32, device=comm)
        cameras = offer.get("cameras")
        plucker = torch.empty(shapes["plucker"], dtype=torch.float64 if cameras else dtype, device=comm)
        fmats = torch.empty(shapes["fmats"], dtype=torch.float32, device=comm)
        for tensor in (texts, plucker, fmats):
            dist.broadcast(tensor, src=0)
        all_texts: List[Optional[torch.Tensor]] = [None] * (max(offer["branches"]) + 1)
        for index, branch in enumerate(offer["branches"]):
            all_texts[branch] = texts[index].cpu()
        table = PairTable([tuple(p) for p in offer["pairs"]], fmats.cpu())
        windows = _window_cameras(plucker.cpu(), cameras) if cameras else None
        whole = RowInputs(all_texts, None if cameras else plucker.cpu(), table)
        latent_shape = list(shapes["latents"])
        with torch.no_grad():
            while True:
                header = torch.empty(HEADER, dtype=torch.int64, device=comm)
                dist.broadcast(header, src=0)
                op, t, plan_len, step = header.tolist()
                if op == OP_END:
                    break
                words = torch.empty(plan_len, dtype=torch.int64, device=comm)
                dist.broadcast(words, src=0)
                words = words.cpu()
                n_window = int(words[0])
                window = tuple(words[1:1 + n_window].tolist()) or None
                rows = whole if window is None else RowInputs(
                    whole.texts, windows.plucker(window), WindowFundamentals(table, window), window)
                shape = latent_shape[:2] + [n_window or latent_shape[2]] + latent_shape[3:]
                latents = torch.empty(shape, dtype=dtype, device=comm)
                dist.broadcast(latents, src=0)
                mine = decode_plans(words[1 + n_window:], world - 1)[rank - 1]
                local = latents.cpu() if comm.type != "cpu" else latents
                for k, call in enumerate(mine):
                    started = time.perf_counter()
                    out = rows.call(denoiser, call, local, int(t))
                    stats["compute_s"] += time.perf_counter() - started
                    dist.send(out.to(comm).contiguous(), dst=0, tag=k)
                    stats["calls"] += 1
                stats["iterations"] += 1
    finally:
        try:
            dist.destroy_process_group()
        except Exception as exc:
            log.warning("destroying the process group: %s", exc)
    return stats

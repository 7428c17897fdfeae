"""Several local devices in one process: a thread per device, rows split by ``plan_calls_split``.

Each participant (a denoiser replica on its device) gets a contiguous run of the iteration's
pairs, balanced by rows, and runs its calls in its own thread while the calling thread collects
the outputs on the latents' device and reports progress. Outputs are handed to the sampler in
participant order (``executor.py``), so the per-view sums add the same terms in the same order as
on one device; what can differ is the rounding of differently sized batches.

Threads are enough: the heavy work runs in torch kernels that release the GIL, and each CUDA
device has its own default stream. On the CPU, participants share the cores: each thread runs its
kernels with ``cpu_count // cpu participants`` intra-op threads (restored after the run), so
``cpu,cpu`` does not oversubscribe the machine.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from ..sampling.batching import CallPlan, plan_calls_split
from ..sampling.executor import Denoiser, Iteration, RowExecutor

Lane = Callable[[Callable[[], bool]], Iterator[torch.Tensor]]
"""A source of one participant's outputs, in its call order; the argument says whether to stop."""


class ParticipantError(RuntimeError):
    """A participant failed; ``participant`` is its index in the plan."""

    def __init__(self, message: str, participant: int):
        super().__init__(message)
        self.participant = participant


def run_lanes(lanes: Sequence[Optional[Lane]], plans: List[List[CallPlan]], progress,
              describe: Callable[[int, BaseException], BaseException]) -> Iterator[Tuple[CallPlan, torch.Tensor]]:
    """Run every lane in its own thread; yield ``(plan, output)`` in participant-major order.

    ``progress.advance(1)`` is called on this thread as each output arrives (any order), which is
    where a cancel is raised; the lanes are then told to stop and joined before the exception
    leaves. ``describe(participant, exc)`` turns a lane's exception into the one raised here.
    """
    order = [(p, k) for p, part in enumerate(plans) for k in range(len(part))]
    if not order:
        return
    done: "queue.Queue" = queue.Queue()
    stop = threading.Event()

    def drive(p: int, lane: Lane) -> None:
        k = 0
        try:
            for out in lane(stop.is_set):  # the lane decides when to stop (a remote one drains first)
                done.put((p, k, out, None))
                k += 1
        except BaseException as exc:  # handed to the calling thread, which raises it
            done.put((p, k, None, exc))

    threads = [threading.Thread(target=drive, args=(p, lane), name=f"cvd-rows-{p}", daemon=True)
               for p, lane in enumerate(lanes) if lane is not None and plans[p]]
    for thread in threads:
        thread.start()
    results = {}
    position = 0
    try:
        for _ in range(len(order)):
            p, k, out, exc = done.get()
            if exc is not None:
                raise describe(p, exc)
            results[(p, k)] = out
            progress.advance(1)  # may raise: the user cancelled
            while position < len(order) and order[position] in results:
                key = order[position]
                yield plans[key[0]][key[1]], results.pop(key)
                position += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()


class CpuThreads:
    """Split the CPU's intra-op threads between ``participants`` threads for one run."""

    def __init__(self, participants: int):
        self.participants = participants
        self.saved: Optional[int] = None
        self.per_thread: Optional[int] = None

    def begin(self) -> None:
        if self.participants > 1:
            self.saved = torch.get_num_threads()
            self.per_thread = max(1, self.saved // self.participants)

    def enter_thread(self) -> None:
        if self.per_thread is not None:
            torch.set_num_threads(self.per_thread)

    def end(self) -> None:
        if self.saved is not None:
            torch.set_num_threads(self.saved)
            self.saved = self.per_thread = None


def local_lane(executor: RowExecutor, denoiser: Denoiser, plans: List[CallPlan], latents: torch.Tensor,
               t: int, threads: Optional[CpuThreads]) -> Lane:
    def lane(stopped):
        if threads is not None and denoiser.device.type == "cpu":
            threads.enter_thread()
        with torch.no_grad():  # grad mode is per thread: a new thread starts with it on
            for plan in plans:
                if stopped():
                    return
                yield executor.rows.call(denoiser, plan, latents, t).to(latents.device, torch.float32)
    return lane


def device_error(denoisers: Sequence[Denoiser]):
    def describe(p: int, exc: BaseException) -> BaseException:
        if isinstance(exc, (ValueError, KeyError)):
            return exc  # bad input: the same error one device gives
        return ParticipantError(f"the denoiser on {denoisers[p].device} (device {p + 1} of {len(denoisers)}) "
                                f"failed: {type(exc).__name__}: {exc}", p)
    return describe


def check_deterministic(denoisers: Sequence[Denoiser]) -> None:
    """Refuse denoisers whose calls draw random numbers: with the calls of a step running concurrently
    (or on several machines) the draws would land on other rows than on one device."""
    for d in denoisers:
        if getattr(d.module, "first_frame_slope", None) == "random":
            raise ValueError("first_frame_slope 'random' draws a slope per denoiser call, so the split would "
                             "change the result: use a fixed slope (or None) on several devices")


class ThreadedExecutor(RowExecutor):
    """Rows of each iteration over several local denoisers (replicas), one thread each."""

    def __init__(self, denoisers: Sequence, default_device: torch.device = torch.device("cpu")):
        if not denoisers:
            raise ValueError("ThreadedExecutor needs at least one denoiser")
        self._denoisers = [d if isinstance(d, Denoiser) else Denoiser(d, default_device) for d in denoisers]
        self.parts = len(self._denoisers)
        self.cpu_threads = CpuThreads(sum(d.device.type == "cpu" for d in self._denoisers))

    @property
    def denoisers(self) -> List[Denoiser]:
        return list(self._denoisers)

    def plan(self, pairs, branches, max_batch):
        return plan_calls_split(pairs, branches, max_batch, self.parts)

    def begin(self, rows, run_pairs, latents) -> None:
        check_deterministic(self._denoisers)
        super().begin(rows, run_pairs, latents)
        self.cpu_threads.begin()

    def run(self, plans, latents, iteration: Iteration, progress):
        progress.check()
        lanes = [local_lane(self, d, plans[p], latents, iteration.timestep, self.cpu_threads)
                 for p, d in enumerate(self._denoisers)]
        yield from run_lanes(lanes, plans, progress, device_error(self._denoisers))

    def end(self, failed: bool) -> None:
        self.cpu_threads.end()

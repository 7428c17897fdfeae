"""The server side of the worker cluster: who is connected, and starting a job on them.

A sampler server (ComfyUI with ``CVD_DIST_LISTEN`` set) runs one ``WorkerPool``: it listens for
workers on the control port and, during a job only, hosts a ``torch.distributed`` TCPStore on the
next port. Workers (``python -m cvd_core.parallel.worker``) connect, authenticate (the shared token's
challenge-response, :mod:`.auth`), send a heartbeat every few seconds and wait for jobs.

Before a connection has authenticated it gets no job data: it is not in the pool, its lines are
limited to ``HELLO_MAX_LINE`` bytes, and it is closed after ``hello_timeout`` seconds. At most
``max_pending`` connections (``max_pending_per_host`` from one address) may be in that state; more
are closed at once, so a flood of idle connections cannot exhaust threads or stop a job.

Every sampling job that asks for workers builds a **fresh process group** of the server (rank 0)
and the workers that are idle at that moment (ranks 1..W), keyed by a random prefix in a store
created for that job (the prefix is sent only to its authenticated ranks), and destroys both at the
end. So a worker that died, was restarted or joined late simply takes part in the next job; nothing
outlives a job but the control connections.

Job start (``open_job``), over the control channel:
1. server -> each worker: ``offer`` (job id, rank, world size, backend, timeout, the model recipe
   and the shapes of the run's tensors);
2. worker: checks its files against the recipe's hashes, builds (or reuses) the model, answers
   ``ready`` or ``refused`` (with the reason: a missing file, a different hash, ...);
3. server: opens the job's store; -> each worker: ``start`` with the store's key prefix when all
   are ready (else ``cancel``), then every rank joins the process group.
At the end each worker answers ``finished`` and becomes idle again.
"""

from __future__ import annotations

import gc
import itertools
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from . import auth
from .control import HELLO_MAX_LINE, MAX_LINE, PROTOCOL, Channel, ChannelClosed

LOG = logging.getLogger("cvd_multiview.parallel")

DEFAULT_PORT = 29650
HEARTBEAT_S = 5.0
STORE_REBIND_S = 10.0  # how long a job waits for the previous job's store port to be free again
HELLO_TIMEOUT_S = 5.0
MAX_PENDING = 32
MAX_PENDING_PER_HOST = 8


class WorkerJobError(RuntimeError):
    """A distributed job could not start or did not finish; the message names the worker and why."""


@dataclass
class Worker:
    """A connected worker as the server sees it."""

    id: int
    name: str
    host: str
    pid: int
    device: str
    channel: Channel
    state: str = "idle"  # idle | busy | finishing | gone
    last_seen: float = field(default_factory=time.monotonic)
    replies: "queue.Queue" = field(default_factory=queue.Queue)

    def label(self, rank: Optional[int] = None) -> str:
        where = f"'{self.name}' on {self.host}, pid {self.pid}, {self.device}"
        return f"worker rank {rank} ({where})" if rank is not None else f"worker {where}"


class WorkerPool:
    """Accepts workers on ``port`` (control) and serves each job's store on ``store_port``.

    ``token``: the shared secret workers must prove they hold (None: loopback only, unless
    ``insecure``; see :func:`.auth.check_listen`).
    """

    def __init__(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT, store_port: Optional[int] = None,
                 heartbeat_timeout: float = 30.0, token: Optional[str] = None, insecure: Optional[bool] = None,
                 hello_timeout: float = HELLO_TIMEOUT_S, max_pending: int = MAX_PENDING,
                 max_pending_per_host: int = MAX_PENDING_PER_HOST):
        self.host = host
        self.port = int(port)
        self.store_port = int(store_port) if store_port else self.port + 1
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.token = token
        self.insecure = insecure
        self.hello_timeout = float(hello_timeout)
        self.max_pending = int(max_pending)
        self.max_pending_per_host = int(max_pending_per_host)
        self.store = None  # the running job's TCPStore (None between jobs)
        self.store_prefix: Optional[str] = None
        self._pending: Dict[str, int] = {}
        self._turned_away = 0
        self._last_turned_away_log = 0.0
        self._workers: Dict[int, Worker] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._jobs = itertools.count(1)
        self._listener: Optional[socket.socket] = None
        self._stopped = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "WorkerPool":
        auth.check_listen(self.host, self.token, self.insecure)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self._listener = listener
        self.port = listener.getsockname()[1]
        threading.Thread(target=self._accept, name="cvd-workers-accept", daemon=True).start()
        threading.Thread(target=self._watch, name="cvd-workers-watch", daemon=True).start()
        LOG.info("cvd-multiview: waiting for sampler workers on %s:%d (%s; job store on port %d during jobs)",
                 self.host, self.port, "token required" if self.token else "no token: loopback or insecure",
                 self.store_port)
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.channel.close()

    # -- connections -----------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError:
                return
            if not self._reserve(address[0]):
                _close_quietly(sock)
                continue
            threading.Thread(target=self._serve, args=(sock, address), daemon=True,
                             name=f"cvd-worker-{address[0]}").start()

    def _reserve(self, host: str) -> bool:
        """A slot for one more unauthenticated connection from ``host``; False (and a rate-limited log) if full."""
        with self._lock:
            total = sum(self._pending.values())
            if total < self.max_pending and self._pending.get(host, 0) < self.max_pending_per_host:
                self._pending[host] = self._pending.get(host, 0) + 1
                return True
            self._turned_away += 1
            now = time.monotonic()
            if now - self._last_turned_away_log < 10.0:
                return False
            self._last_turned_away_log, count, self._turned_away = now, self._turned_away, 0
        LOG.warning("cvd-multiview: closed %d connection(s) to the worker port at once: %d unauthenticated "
                    "connections pending (at most %d, %d per address; the latest from %s)", count, total,
                    self.max_pending, self.max_pending_per_host, host)
        return False

    def _unreserve(self, host: str) -> None:
        with self._lock:
            self._pending[host] -= 1
            if not self._pending[host]:
                del self._pending[host]

    def _serve(self, sock: socket.socket, address) -> None:
        try:
            channel = Channel(sock, f"{address[0]}:{address[1]}", max_line=HELLO_MAX_LINE)
        except OSError:
            self._unreserve(address[0])
            _close_quietly(sock)
            return
        try:
            hello, problem = self._handshake(channel)
        finally:
            self._unreserve(address[0])
        if problem is not None:
            if problem:
                LOG.warning("cvd-multiview: refused a worker from %s: %s", address[0], problem)
                try:
                    channel.send({"type": "bye", "error": problem})
                except ChannelClosed:
                    pass
            channel.close()
            return
        channel.max_line = MAX_LINE
        worker = Worker(next(self._ids), str(hello.get("name", "?"))[:200], address[0], _int(hello.get("pid")),
                        str(hello.get("device", "?"))[:200], channel)
        with self._lock:
            self._workers[worker.id] = worker
        try:
            channel.send({"type": "welcome", "worker": worker.id})
        except ChannelClosed:
            pass
        LOG.info("cvd-multiview: %s joined", worker.label())
        self._dispatch(worker)

    def _handshake(self, channel: Channel):
        """``(hello, None)`` for a worker that may join, else ``(None, why)`` (``''``: it just went silent).

        Hello, then (with a token) challenge -> proof, all within ``hello_timeout`` seconds.
        """
        deadline = time.monotonic() + self.hello_timeout
        hello = _receive_by(channel, deadline)
        if hello is None:
            return None, ""
        if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL:
            return None, f"protocol {hello.get('protocol')!r}: this server speaks {PROTOCOL} (update the worker)"
        if self.token is None:
            return hello, None
        worker_nonce, server_nonce = hello.get("nonce"), auth.new_nonce()
        if not isinstance(worker_nonce, str) or not 32 <= len(worker_nonce) <= 128:
            return None, "no nonce in its hello"
        try:
            channel.send({"type": "challenge", "nonce": server_nonce,
                          "proof": auth.proof(self.token, "server", server_nonce, worker_nonce)})
        except ChannelClosed:
            return None, ""
        answer = _receive_by(channel, deadline)
        if answer is None:
            return None, ("no answer to the token challenge: a worker without the token or with another one "
                          "(CVD_DIST_TOKEN / --token-file must match the server's)")
        if answer.get("type") != "auth" or not auth.verify(self.token, "worker", server_nonce, worker_nonce,
                                                           answer.get("proof")):
            return None, "wrong or missing token (CVD_DIST_TOKEN / --token-file must match the server's)"
        return hello, None

    def _dispatch(self, worker: Worker) -> None:
        while True:
            try:
                message = worker.channel.receive()
            except ChannelClosed:
                break
            worker.last_seen = time.monotonic()
            kind = message.get("type")
            if kind == "ping":
                continue
            if kind == "finished":
                with self._lock:
                    if worker.state in ("busy", "finishing"):
                        worker.state = "idle"
                if not message.get("ok", True):
                    LOG.info("cvd-multiview: %s ended job %s: %s", worker.label(), message.get("job"),
                             message.get("error"))
                continue
            worker.replies.put(message)
        self._drop(worker, "its control connection closed")

    def _drop(self, worker: Worker, why: str) -> None:
        with self._lock:
            if self._workers.pop(worker.id, None) is None:
                return
            worker.state = "gone"
        worker.channel.close()
        worker.replies.put(None)
        LOG.warning("cvd-multiview: %s left (%s)", worker.label(), why)

    def _watch(self) -> None:
        while not self._stopped.wait(1.0):
            now = time.monotonic()
            with self._lock:
                silent = [w for w in self._workers.values() if now - w.last_seen > self.heartbeat_timeout]
            for worker in silent:
                self._drop(worker, f"no heartbeat for {self.heartbeat_timeout:.0f} s")

    # -- jobs ------------------------------------------------------------------------------------

    def workers(self) -> List[Worker]:
        with self._lock:
            return sorted(self._workers.values(), key=lambda w: w.id)

    def claim(self, limit: Optional[int] = None) -> List[Worker]:
        """Mark the idle workers (at most ``limit``) busy and return them, in joining order."""
        with self._lock:
            idle = [w for w in sorted(self._workers.values(), key=lambda w: w.id) if w.state == "idle"]
            chosen = idle if limit is None else idle[:limit]
            for worker in chosen:
                worker.state = "busy"
        return chosen

    def release(self, workers: List[Worker], wait_s: float = 0.0) -> None:
        """After a job: each worker becomes idle again when it reports ``finished``.

        ``wait_s``: how long to wait for those reports (a worker reports right after it leaves the
        group), so that the next job finds the workers idle instead of running without them.
        """
        with self._lock:
            for worker in workers:
                if worker.state == "busy":
                    worker.state = "finishing"
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with self._lock:
                if all(w.state in ("idle", "gone") for w in workers):
                    return
            time.sleep(0.02)

    def new_job_id(self) -> str:
        return f"{int(time.time())}-{next(self._jobs)}"

    def open_store(self) -> None:
        """The job's TCPStore, with a random key prefix that only the job's ranks are told."""
        import secrets

        import torch.distributed as dist

        self.close_store()
        deadline = time.monotonic() + STORE_REBIND_S
        while True:
            try:
                self.store = dist.TCPStore(self.host, self.store_port, is_master=True, wait_for_workers=False)
                break
            except RuntimeError as exc:
                if "EADDRINUSE" not in str(exc) or time.monotonic() > deadline:
                    raise
                # A failed job's traceback (a reference cycle, kept by whoever reported the error) can still
                # hold the previous store's socket: only the cyclic collector frees it.
                gc.collect()
                time.sleep(0.1)
        self.store_prefix = f"cvd/{secrets.token_hex(16)}/"

    def close_store(self) -> None:
        """Stop the job's store (its port closes once the process group that used it is destroyed)."""
        self.store, self.store_prefix = None, None

    def open_job(self, job_id: str, workers: List[Worker], offers: List[dict], load_timeout: float) -> None:
        """Offer the job to every worker and start it once all are ready; raise ``WorkerJobError`` if not."""
        for rank, (worker, offer) in enumerate(zip(workers, offers), start=1):
            try:
                worker.channel.send(offer)
            except ChannelClosed:
                self._cancel(job_id, workers)
                raise WorkerJobError(f"{worker.label(rank)} left before the job started") from None
        deadline = time.monotonic() + load_timeout
        for rank, worker in enumerate(workers, start=1):
            reply = self._reply(worker, job_id, deadline)
            problem = None
            if reply is None:
                problem = f"{worker.label(rank)} disconnected while loading the model"
            elif reply == "timeout":
                problem = (f"{worker.label(rank)} did not get the model ready within {load_timeout:.0f} s "
                           "(CVD_DIST_LOAD_TIMEOUT)")
            elif reply.get("type") == "refused":
                problem = f"{worker.label(rank)} refused the job: {reply.get('error')}"
            if problem:
                self._cancel(job_id, workers)
                raise WorkerJobError(problem)
        try:
            self.open_store()
        except (RuntimeError, OSError) as exc:  # e.g. the store port taken by another program
            self._cancel(job_id, workers)
            raise WorkerJobError(f"the job store could not listen on port {self.store_port} "
                                 f"(CVD_DIST_STORE_PORT): {exc}") from None
        for rank, worker in enumerate(workers, start=1):
            try:
                worker.channel.send({"type": "start", "job": job_id, "store_prefix": self.store_prefix})
            except ChannelClosed:
                self._cancel(job_id, workers)
                raise WorkerJobError(f"{worker.label(rank)} left before the job started") from None

    def _reply(self, worker: Worker, job_id: str, deadline: float):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            try:
                message = worker.replies.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if message is None:
                worker.replies.put(None)
                return None
            if message.get("job") == job_id and message.get("type") in ("ready", "refused"):
                return message

    def _cancel(self, job_id: str, workers: List[Worker]) -> None:
        self.close_store()
        for worker in workers:
            try:
                worker.channel.send({"type": "cancel", "job": job_id})
            except ChannelClosed:
                pass
        self.release(workers)

    def state_of(self, worker: Worker) -> str:
        with self._lock:
            return worker.state


def _receive_by(channel: Channel, deadline: float) -> Optional[dict]:
    try:
        return channel.receive(timeout=max(deadline - time.monotonic(), 0.001))
    except (ChannelClosed, queue.Empty):
        return None


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass

"""A sampler worker: lends this machine's device to a CVD sampler server over ``torch.distributed``.

Start one per device (from the pack's folder, so that ``cvd_core`` is importable)::

    python -m cvd_core.parallel.worker --server 192.168.1.10:29650 --models /path/to/ComfyUI/models
    torchrun --nproc-per-node 2 -m cvd_core.parallel.worker --server 192.168.1.10:29650 --models ...

``torchrun`` only launches the processes here (one per GPU: ``LOCAL_RANK`` picks ``cuda:N``); the
ranks of each job are given by the server, which builds a fresh process group per job. The worker
connects to the server's control port, waits for jobs, checks its model files against the
server's hashes, loads the same model (kept between jobs while the recipe stays the same), runs
its share of the rows and goes back to waiting. When the server goes away the worker reconnects
every few seconds, so servers and workers can be restarted in any order.

Environment (each has a flag): ``CVD_DIST_SERVER`` (host:port of the server's control port),
``CVD_DIST_MODELS`` (ComfyUI ``models`` folders, ``os.pathsep``-separated), ``CVD_DIST_DEVICE``,
``CVD_DIST_THREADS`` (CPU intra-op threads), ``CVD_DIST_NAME``, ``CVD_DIST_TOKEN`` or
``CVD_DIST_TOKEN_FILE`` (the server's shared token; ``--token-file``).

With a token the worker proves it holds it (HMAC challenge-response, the token itself is never
sent) and joins only a server that proves the same; a server that refuses it ends the worker
(exit status 2), as a wrong token will not fix itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import socket
import sys
import threading
import time
from typing import List, Optional

import torch

from .cluster import DEFAULT_PORT, HEARTBEAT_S
from . import auth
from .control import PROTOCOL, Channel, ChannelClosed, parse_address
from .recipe import RecipeError, build, default_model_roots, recipe_digest, verify

LOG = logging.getLogger("cvd_multiview.worker")


def default_device() -> str:
    """``cuda:LOCAL_RANK`` under torchrun with GPUs, ``cuda:0`` with a GPU, else ``cpu``."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % max(torch.cuda.device_count(), 1)}"
    return "cpu"


class Refused(RuntimeError):
    """The server will not take this worker (wrong token, other protocol): retrying cannot help."""


class Worker:
    def __init__(self, server: str, roots: List[str], device: str, name: str, retry_s: float = 2.0,
                 token: Optional[str] = None):
        self.host, self.port = parse_address(server, DEFAULT_PORT)
        self.token = token
        self.roots = roots
        self.device = torch.device(device)
        self.name = name
        self.retry_s = retry_s
        self.model = None
        self.model_digest: Optional[str] = None
        self.jobs = 0

    # -- connection ------------------------------------------------------------------------------

    def connect(self) -> Channel:
        announced = False
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=10)
                sock.settimeout(None)
                channel = Channel(sock, f"{self.host}:{self.port}")
                try:
                    welcome = self._hello(channel)
                except BaseException:
                    channel.close()
                    raise
                LOG.info("joined the sampler server %s:%d as worker %s (%s%s)", self.host, self.port,
                         welcome.get("worker"), self.device, ", token verified" if self.token else "")
                return channel
            except (OSError, ChannelClosed, queue.Empty) as exc:
                if not announced:
                    LOG.info("waiting for the sampler server at %s:%d (%s); retrying every %.0f s", self.host,
                             self.port, exc, self.retry_s)
                    announced = True
                time.sleep(self.retry_s)

    def _hello(self, channel: Channel) -> dict:
        """Hello and, with a token on either side, the challenge-response; the server's welcome."""
        nonce = auth.new_nonce()
        channel.send({"type": "hello", "protocol": PROTOCOL, "name": self.name, "pid": os.getpid(),
                      "device": str(self.device), "torch": torch.__version__, "nonce": nonce})
        answer = channel.receive(timeout=15)
        if answer.get("type") == "challenge":
            if self.token is None:
                raise Refused("the server requires a token: set CVD_DIST_TOKEN or --token-file to the server's")
            server_nonce = str(answer.get("nonce", ""))
            if not auth.verify(self.token, "server", server_nonce, nonce, answer.get("proof")):
                raise Refused("the server could not prove it holds our token (a different token, or not our "
                              "server): not joining it")
            channel.send({"type": "auth", "proof": auth.proof(self.token, "worker", server_nonce, nonce)})
            answer = channel.receive(timeout=15)
        elif self.token is not None and answer.get("type") == "welcome":
            raise Refused("the server accepts workers without a token, but this worker has one: give the server "
                          "the same CVD_DIST_TOKEN (a worker with a token joins only servers that prove it)")
        if answer.get("type") == "bye":
            raise Refused(f"the server refused this worker: {answer.get('error')}")
        if answer.get("type") != "welcome":
            raise ChannelClosed(f"unexpected answer {answer}")
        return answer

    def heartbeat(self, channel: Channel) -> None:
        while not channel.closed.wait(HEARTBEAT_S):
            try:
                channel.send({"type": "ping"})
            except ChannelClosed:
                return

    def serve_forever(self, max_jobs: Optional[int] = None) -> None:
        while max_jobs is None or self.jobs < max_jobs:
            channel = self.connect()
            threading.Thread(target=self.heartbeat, args=(channel,), daemon=True, name="cvd-heartbeat").start()
            try:
                while max_jobs is None or self.jobs < max_jobs:
                    message = channel.receive()
                    if message.get("type") == "offer":
                        self.handle_offer(channel, message)
                    elif message.get("type") == "bye":
                        LOG.error("the server sent us away: %s", message.get("error"))
                        return
            except ChannelClosed:
                LOG.warning("lost the connection to the sampler server; reconnecting")
            finally:
                channel.close()

    # -- jobs ------------------------------------------------------------------------------------

    def ensure_model(self, recipe: dict):
        digest = recipe_digest(recipe)
        if self.model is not None and digest == self.model_digest:
            verify(recipe, self.roots)  # files may have changed on disk since (hashes are cached by mtime)
            return self.model
        self.model = self.model_digest = None  # free the old model before loading the new one
        started = time.perf_counter()
        model = build(recipe, self.roots, self.device)
        LOG.info("model ready in %.1f s (recipe %s)", time.perf_counter() - started, digest[:12])
        self.model, self.model_digest = model, digest
        return model

    def handle_offer(self, channel: Channel, offer: dict) -> None:
        from .distributed import serve_job

        job = offer["job"]
        self.jobs += 1
        try:
            model = self.ensure_model(offer["recipe"])
        except (RecipeError, OSError, ValueError, KeyError, RuntimeError) as exc:
            LOG.error("refusing job %s: %s", job, exc)
            channel.send({"type": "refused", "job": job, "error": str(exc)})
            channel.send({"type": "finished", "job": job, "ok": False, "error": str(exc)})
            return
        channel.send({"type": "ready", "job": job})
        answer = self._await_start(channel, job, float(offer.get("timeout_s", 600)))
        if answer.get("type") != "start":
            channel.send({"type": "finished", "job": job, "ok": False, "error": f"job {answer.get('type')}"})
            return
        offer = dict(offer, store_prefix=str(answer.get("store_prefix") or f"cvd/{job}/"))
        started = time.perf_counter()
        try:
            store = torch.distributed.TCPStore(self.host, int(offer["store_port"]), is_master=False,
                                               timeout=_seconds(offer.get("timeout_s", 600)))
            stats = serve_job(offer, model, store, LOG)
        except Exception as exc:  # the job failed (server gone, a peer died, ...): back to waiting
            LOG.warning("job %s stopped: %s", job, str(exc).strip()[:500])
            channel.send({"type": "finished", "job": job, "ok": False, "error": str(exc)[:500]})
            return
        LOG.info("job %s done: rank %s, %d iterations, %d calls, %.2f s computing of %.2f s", job, offer["rank"],
                 stats["iterations"], stats["calls"], stats["compute_s"], time.perf_counter() - started)
        channel.send({"type": "finished", "job": job, "ok": True})

    def _await_start(self, channel: Channel, job: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = channel.receive(timeout=1.0)
            except queue.Empty:
                continue
            if message.get("job") == job and message.get("type") in ("start", "cancel"):
                return message
        return {"type": "timed out waiting for start"}


def _seconds(value):
    from datetime import timedelta
    return timedelta(seconds=float(value))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvd_core.parallel.worker",
                                     description="Lend this machine's device to a CVD sampler server.")
    parser.add_argument("--server", default=os.environ.get("CVD_DIST_SERVER", ""),
                        help="host:port of the server's control port (CVD_DIST_LISTEN on the server; default "
                             f"port {DEFAULT_PORT}). Env: CVD_DIST_SERVER")
    parser.add_argument("--models", action="append", default=None,
                        help="a ComfyUI models folder holding the same files as the server's (repeatable). "
                             "Env: CVD_DIST_MODELS")
    parser.add_argument("--device", default=os.environ.get("CVD_DIST_DEVICE", "") or default_device(),
                        help="device to compute on (default: cuda:LOCAL_RANK with GPUs, else cpu). Env: CVD_DIST_DEVICE")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("CVD_DIST_THREADS", "0") or 0),
                        help="CPU intra-op threads (0 = torch's default). Env: CVD_DIST_THREADS")
    parser.add_argument("--name", default=os.environ.get("CVD_DIST_NAME", "") or f"{socket.gethostname()}-{os.getpid()}",
                        help="name shown in the server's log and errors. Env: CVD_DIST_NAME")
    parser.add_argument("--token-file", default=os.environ.get("CVD_DIST_TOKEN_FILE", ""),
                        help="file holding the server's shared token (first line). Env: CVD_DIST_TOKEN (the token "
                             "itself) or CVD_DIST_TOKEN_FILE")
    parser.add_argument("--max-jobs", type=int, default=None, help=argparse.SUPPRESS)  # tests and benchmarks
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s cvd-worker %(levelname)s %(message)s",
                        stream=sys.stderr)
    if not args.server:
        parser.error("--server host:port (or CVD_DIST_SERVER) is required")
    roots = args.models or default_model_roots()
    if not roots:
        parser.error("--models /path/to/ComfyUI/models (or CVD_DIST_MODELS) is required")
    try:
        token = auth.load_token(token_file=args.token_file or None)
    except auth.AuthError as exc:
        parser.error(str(exc))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        Worker(args.server, roots, args.device, args.name, token=token).serve_forever(args.max_jobs)
    except Refused as exc:
        LOG.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

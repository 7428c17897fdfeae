"""Scaling the sampler out in the real ComfyUI: ``devices = cpu,cpu`` (a thread per replica), and a
torch.distributed worker process (gloo) joining a server started with ``CVD_DIST_LISTEN``.

The latents are read back exactly (core ``SaveLatent`` writes them as safetensors). Tolerance as in
``tests/core/test_sampling_parallel_model.py``: 8x the noise floor of changing the batch
composition (``max_batch`` 2 vs auto, measured in the same run) plus 16 float32 ulps.

The numerical checks run on a server started with one intra-op thread (``OMP_NUM_THREADS=1``), as the
worker is: ``cpu,cpu`` gives each replica ``cores // 2`` threads, and on AVX-512 CPUs a kernel's
rounding depends on its thread count (measured on a 2-core Xeon with AMX: 6.7e-5 between 2 threads and
1, more than the batch floor allows), which is not what these tests are about.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.support.comfy_harness import PACK_ROOT, ComfyError, ComfyServer, free_port
from tests.support.pack_info import api_workflows

pytestmark = pytest.mark.integration

SAMPLER = "7"


def _prompt(prefix: str, devices=None, steps: int = 2, max_batch: int = 0, seed: int = 42):
    """The two-view workflow up to the sampler (4 frames, 64 px), then SaveLatent."""
    workflow = copy.deepcopy(next(p for n, p, _ in api_workflows() if n == "cvd_two_views"))
    prompt = {k: workflow[k] for k in ("1", "2", "3", "4", "5", "6", SAMPLER)}
    for poses in ("5", "6"):
        prompt[poses]["inputs"]["frames"] = 4
    prompt[SAMPLER]["inputs"].update(steps=steps, max_batch=max_batch, seed=seed)
    if devices is not None:
        prompt[SAMPLER]["inputs"]["devices"] = devices
    prompt["20"] = {"class_type": "SaveLatent", "inputs": {"samples": [SAMPLER, 0], "filename_prefix": prefix}}
    return prompt


def _latent(server: ComfyServer, entry) -> torch.Tensor:
    from safetensors.torch import load_file

    (item,) = entry["outputs"]["20"]["latents"]
    return load_file(str(server.output_dir / item["subfolder"] / item["filename"]))["latent_tensor"]


def _run(server: ComfyServer, prefix: str, **kw) -> torch.Tensor:
    return _latent(server, server.run(_prompt(prefix, **kw), timeout=600))


def tolerance(reference, floor_run):
    floor = float((floor_run - reference).abs().max())
    return 8 * floor + 16 * torch.finfo(torch.float32).eps * float(reference.abs().max())


def test_cpu_cpu_gives_the_same_latents(dist_server, local_runs):
    server, _ = dist_server
    alone, floor_run = local_runs
    reference = _run(server, "scale/one")  # no devices input: a workflow saved before it existed
    assert reference.shape == (2, 4, 4, 8, 8) and torch.equal(reference, alone)
    split = _run(server, "scale/two", devices="cpu,cpu")
    assert float((split - reference).abs().max()) <= tolerance(reference, floor_run)
    assert torch.equal(_run(server, "scale/empty", devices=""), reference)  # '' = the old path, exactly


def test_bad_devices_are_named(comfy_server):
    error = comfy_server.failure_of(_prompt("scale/bad", devices="cuda:0"))
    assert "devices: 'cuda:0' needs a CUDA GPU, but torch sees none" in error
    error = comfy_server.failure_of(_prompt("scale/workers", devices="workers"))
    assert "devices: 'workers' needs this ComfyUI started with CVD_DIST_LISTEN" in error
    assert comfy_server.answers()


# ------------------------------------------------------------------------------ torch.distributed


TOKEN = "integration-test-token-0123456789"


@pytest.fixture(scope="module")
def dist_server(tmp_path_factory):
    """A ComfyUI of its own that listens for sampler workers (CVD_DIST_LISTEN), requires the token
    (CVD_DIST_TOKEN) and computes with one intra-op thread like the workers; and its control port."""
    from tests.support.model_installers import install_test_models

    port = free_port()
    server = ComfyServer(tmp_path_factory.mktemp("comfyui_dist"))
    install_test_models(server.root)
    saved = {k: os.environ.get(k) for k in ("CVD_DIST_LISTEN", "CVD_DIST_STORE_PORT", "CVD_DIST_TIMEOUT",
                                            "CVD_DIST_TOKEN", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(CVD_DIST_LISTEN=f"127.0.0.1:{port}", CVD_DIST_STORE_PORT=str(free_port()),
                      CVD_DIST_TIMEOUT="60", CVD_DIST_TOKEN=TOKEN, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        server.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield server, port
    finally:
        server.stop()


class WorkerProcess:
    """``python -m cvd_core.parallel.worker`` against the test server, one CPU thread; killed by PID."""

    def __init__(self, server: ComfyServer, port: int, name: str, token=TOKEN):
        self.log = server.workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("CVD_DIST_TOKEN", "CVD_DIST_TOKEN_FILE")}
        if token is not None:
            env["CVD_DIST_TOKEN"] = token
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cvd_core.parallel.worker", "--server", f"127.0.0.1:{port}", "--models",
                 str(server.models_dir), "--threads", "1", "--name", name],
                cwd=PACK_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def _wait_for_log(server: ComfyServer, text: str, count: int = 1, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while server.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the server log:\n{server.log_tail()}"
        assert server.alive(), server.log_tail()
        time.sleep(0.1)


@pytest.fixture(scope="module")
def local_runs(dist_server):
    """The job with ``devices = workers`` before any worker joined (it runs locally), and the noise
    floor run (``max_batch`` 2), both on the dist server."""
    server, _ = dist_server
    alone = _run(server, "dist/alone", devices="workers")
    assert "no idle sampler worker connected: this job runs on the local device(s) only" in server.log_text()
    return alone, _run(server, "dist/floor", max_batch=2)


def test_a_worker_rank_gives_the_same_latents_and_killing_it_fails_only_that_job(dist_server, local_runs):
    server, port = dist_server
    alone, floor_run = local_runs  # nobody had joined: it ran locally, and said so

    worker = WorkerProcess(server, port, "worker-a")
    try:
        _wait_for_log(server, "worker 'worker-a'")
        joined = _run(server, "dist/joined", devices="workers")
        _wait_for_log(server, "+ 1 worker(s) (gloo)")
        assert float((joined - alone).abs().max()) <= tolerance(alone, floor_run)

        prompt_id = server.queue(_prompt("dist/killed", devices="workers", steps=400))
        _wait_for_log(server, "+ 1 worker(s) (gloo)", count=2)
        time.sleep(1.0)  # a few steps in
        worker.kill()
        with pytest.raises(ComfyError) as failed:
            server.wait(prompt_id, timeout=120)
        message = str(failed.value)
        assert "worker rank 1 ('worker-a'" in message and "failed at step" in message, message
        assert "the worker process ended or lost its connection" in message, message
        assert "next job uses the workers still connected (or runs locally)" in message
        assert server.answers()
        assert not list((server.output_dir / "dist").glob("killed*"))  # nothing half-written

        after = _run(server, "dist/after", devices="workers")  # the next job: locally, the same latents
        assert server.log_text().count("no idle sampler worker connected") == 2
        assert torch.equal(after, alone)
    finally:
        worker.kill()


def _flood(port: int, idle: int = 200, line_bytes: int = 10 << 20):
    """One connection sending a ``line_bytes`` line without a newline, then ``idle`` that never speak."""
    huge = socket.create_connection(("127.0.0.1", port))
    sent = 0
    try:
        while sent < line_bytes:
            huge.sendall(b"x" * 65536)
            sent += 65536
    except OSError:  # the server cut it off
        pass
    return [huge] + [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)], sent


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_workers_without_the_token_are_refused_and_a_flood_does_not_stop_a_job(dist_server, local_runs):
    server, port = dist_server
    alone, floor_run = local_runs
    wrong = WorkerProcess(server, port, "worker-wrong", token="another-token-0123456789")
    missing = WorkerProcess(server, port, "worker-none", token=None)
    good = WorkerProcess(server, port, "worker-good")
    flood = []
    try:
        assert wrong.process.wait(timeout=120) == 2 and missing.process.wait(timeout=120) == 2  # refused: they end
        assert "could not prove it holds our token" in wrong.log.read_text()
        assert "the server requires a token" in missing.log.read_text()
        assert server.log_text().count("refused a worker from 127.0.0.1: no answer to the token challenge") == 2
        _wait_for_log(server, "worker 'worker-good'")
        jobs_before = server.log_text().count("+ 1 worker(s) (gloo)")
        flood, sent = _flood(port)
        assert sent < 10 << 20  # the 10 MB line was cut off
        # while the flood's connections are pending; 'cpu,workers' is 'workers' on this CPU server, spelled
        # differently so that ComfyUI's cache of the previous test's identical run does not answer
        joined = _run(server, "auth/joined", devices="cpu,workers")
        _wait_for_log(server, "+ 1 worker(s) (gloo)", count=jobs_before + 1)
        assert float((joined - alone).abs().max()) <= tolerance(alone, floor_run)
        assert all(_closed_by_server(s) for s in flood)  # after the hello timeout at the latest
        for refused in (wrong, missing):  # no offer ever reached them
            assert "job" not in refused.log.read_text()
        assert "worker-wrong" not in server.log_text() and "worker-none" not in server.log_text()
    finally:
        for sock in flood:
            sock.close()
        for worker in (wrong, missing, good):
            worker.kill()

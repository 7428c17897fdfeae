"""The control channel between a sampler server and its workers: JSON lines over one TCP socket.

It carries only small messages (hello, job offers, ready/refused, finished, heartbeats); tensors
travel on the job's ``torch.distributed`` process group. A closed socket is how either side learns
that the other one is gone, which is what lets the server drop a dead worker at once and a worker
reconnect to a restarted server.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
from typing import Optional

PROTOCOL = 2  # 2: hello with nonces and the token's challenge-response (cvd_core.parallel.auth)
MAX_LINE = 1 << 20  # a job offer with its recipe is a few kB
HELLO_MAX_LINE = 4096  # before authentication: a hello or a proof is a few hundred bytes


class ChannelClosed(ConnectionError):
    """The other side closed the control connection (or it broke)."""


class Channel:
    """One control connection: ``send(dict)`` from any thread; messages queue up in ``inbox``."""

    def __init__(self, sock: socket.socket, peer: str, max_line: int = MAX_LINE):
        self.sock = sock
        self.peer = peer
        self.max_line = max_line  # raised by the server once the peer has authenticated
        self.inbox: "queue.Queue[Optional[dict]]" = queue.Queue()
        self.closed = threading.Event()
        self._send_lock = threading.Lock()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._reader = threading.Thread(target=self._read, name=f"cvd-control-{peer}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if len(line) > self.max_line:
                        return  # not our protocol
                    if line.strip():
                        message = json.loads(line)
                        if not isinstance(message, dict):
                            return  # every message of the protocol is an object
                        self.inbox.put(message)
                if len(buffer) > self.max_line:
                    return  # a line longer than any message: not our protocol
        except (OSError, ValueError, RecursionError):
            pass
        finally:
            self.closed.set()
            self.inbox.put(None)  # wakes up a reader waiting on the inbox

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.close()
                raise ChannelClosed(f"control connection to {self.peer} is closed: {exc}") from None

    def receive(self, timeout: Optional[float] = None) -> dict:
        """The next message; ``ChannelClosed`` when the peer has gone, ``queue.Empty`` on timeout."""
        if self.closed.is_set() and self.inbox.empty():
            raise ChannelClosed(f"control connection to {self.peer} is closed")
        message = self.inbox.get(timeout=timeout)
        if message is None:
            self.inbox.put(None)  # keep the marker for later readers
            raise ChannelClosed(f"control connection to {self.peer} is closed")
        return message

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed.set()


def parse_address(text: str, default_port: int) -> tuple:
    """``host:port`` / ``host`` / ``:port`` -> ``(host, port)``."""
    text = (text or "").strip()
    if not text:
        raise ValueError("an address must be host:port (e.g. 192.168.1.10:29650)")
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {text!r}: the port must be a number from 1 to 65535")
    return (host or "0.0.0.0"), int(port)

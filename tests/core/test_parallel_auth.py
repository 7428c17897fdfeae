"""Worker authentication on a real WorkerPool over loopback TCP: the token's challenge-response
(the token never sent), refusals, listen rules, and the bounds on unauthenticated connections."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

from cvd_core.parallel import auth
from cvd_core.parallel.cluster import WorkerPool
from cvd_core.parallel.control import PROTOCOL
from cvd_core.parallel.worker import Refused, Worker

TOKEN = "t0ken-for-the-tests-0123456789"
HELLO_TIMEOUT = 1.0


@pytest.fixture
def pool():
    pool = WorkerPool("127.0.0.1", 0, store_port=1, token=TOKEN, hello_timeout=HELLO_TIMEOUT, max_pending=6,
                      max_pending_per_host=4).start()
    yield pool
    pool.stop()


class Raw:
    """A hand-written client: sends lines, records every byte it sent."""

    def __init__(self, pool):
        self.sock = socket.create_connection(("127.0.0.1", pool.port), timeout=10)
        self.sent = b""
        self.file = self.sock.makefile("rb")

    def send(self, message) -> None:
        data = (json.dumps(message) + "\n").encode()
        self.sent += data
        self.sock.sendall(data)

    def receive(self):
        line = self.file.readline()
        return json.loads(line) if line else None

    def hello(self, nonce="ab" * 32):
        self.send({"type": "hello", "protocol": PROTOCOL, "name": "raw", "pid": 1, "device": "cpu", "nonce": nonce})
        return self.receive()

    def close(self):
        self.file.close()
        self.sock.close()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection within ``seconds`` (reading what it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


def _wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_right_token_joins_and_is_never_sent(pool):
    client = Raw(pool)
    challenge = client.hello()
    assert challenge["type"] == "challenge" and auth.verify(TOKEN, "server", challenge["nonce"], "ab" * 32,
                                                            challenge["proof"])
    client.send({"type": "auth", "proof": auth.proof(TOKEN, "worker", challenge["nonce"], "ab" * 32)})
    assert client.receive()["type"] == "welcome"
    _wait_for(lambda: len(pool.workers()) == 1)
    assert TOKEN.encode() not in client.sent
    client.close()


@pytest.mark.parametrize("proof", ["wrong", None, "server-proof-replayed"])
def test_a_wrong_or_missing_proof_is_refused_and_never_joins(pool, proof):
    client = Raw(pool)
    challenge = client.hello()
    if proof == "wrong":
        proof = auth.proof("another-token-0123456789", "worker", challenge["nonce"], "ab" * 32)
    elif proof == "server-proof-replayed":
        proof = challenge["proof"]
    client.send({"type": "auth", "proof": proof})
    bye = client.receive()
    assert bye["type"] == "bye" and "wrong or missing token" in bye["error"]
    assert client.receive() is None and pool.workers() == []
    client.close()


def test_silent_and_tokenless_clients_are_closed_after_the_hello_timeout(pool):
    silent, tokenless = Raw(pool), Raw(pool)
    assert tokenless.hello()["type"] == "challenge"  # and never answers
    started = time.monotonic()
    assert _closed_within(silent.sock, HELLO_TIMEOUT + 5) and _closed_within(tokenless.sock, HELLO_TIMEOUT + 5)
    assert time.monotonic() - started >= HELLO_TIMEOUT * 0.8 and pool.workers() == []


def test_the_real_worker_client_joins_and_refuses_as_it_should(pool):
    good = Worker(f"127.0.0.1:{pool.port}", ["."], "cpu", "good", token=TOKEN)
    channel = good.connect()
    _wait_for(lambda: [w.name for w in pool.workers()] == ["good"])
    channel.close()
    for token, message in ((None, "the server requires a token"),
                           ("another-token-0123456789", "could not prove it holds our token")):
        with pytest.raises(Refused, match=message):
            Worker(f"127.0.0.1:{pool.port}", ["."], "cpu", "bad", token=token).connect()
    open_pool = WorkerPool("127.0.0.1", 0, store_port=1).start()  # no token, loopback
    try:
        with pytest.raises(Refused, match="accepts workers without a token"):
            Worker(f"127.0.0.1:{open_pool.port}", ["."], "cpu", "strict", token=TOKEN).connect()
        Worker(f"127.0.0.1:{open_pool.port}", ["."], "cpu", "plain").connect().close()
    finally:
        open_pool.stop()
    assert [w.name for w in pool.workers()] in ([], ["good"])  # the refused ones never joined


def test_a_line_longer_than_a_hello_is_cut_off_at_once():
    patient = WorkerPool("127.0.0.1", 0, store_port=1, token=TOKEN, hello_timeout=60.0).start()
    try:
        huge = socket.create_connection(("127.0.0.1", patient.port))
        started, sent = time.monotonic(), 0
        try:
            while sent < 10 << 20:  # 10 MB without a newline
                huge.sendall(b"x" * 65536)
                sent += 65536
        except OSError:
            pass  # the server closed it
        assert _closed_within(huge, 10) and time.monotonic() - started < 30  # the line bound, not the timeout
        huge.close()
        Worker(f"127.0.0.1:{patient.port}", ["."], "cpu", "good", token=TOKEN).connect().close()
    finally:
        patient.stop()


def test_a_flood_of_idle_connections_does_not_keep_a_good_worker_out(pool):
    flood = [socket.create_connection(("127.0.0.1", pool.port)) for _ in range(40)]
    # beyond the 4 pending per address the server closes at once, without waiting for a hello
    assert sum(_closed_within(s, 0.3) for s in flood[4:]) == len(flood) - 4
    # the pending slots free up after the hello timeout: a good worker joins
    good = Worker(f"127.0.0.1:{pool.port}", ["."], "cpu", "good", token=TOKEN, retry_s=0.2)
    joined = threading.Thread(target=good.connect, daemon=True)
    joined.start()
    joined.join(HELLO_TIMEOUT * 2 + 10)
    assert [w.name for w in pool.workers()] == ["good"]
    for s in flood:
        s.close()


def test_listen_rules_and_token_settings(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("CVD_DIST_TOKEN", raising=False)
    monkeypatch.delenv("CVD_DIST_TOKEN_FILE", raising=False)
    monkeypatch.delenv("CVD_DIST_INSECURE", raising=False)
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("localhost") and not auth.is_loopback("0.0.0.0")
    with pytest.raises(auth.AuthError, match="needs a shared token: set CVD_DIST_TOKEN"):
        WorkerPool("0.0.0.0", 0, store_port=1).start()
    monkeypatch.setenv("CVD_DIST_INSECURE", "1")
    with caplog.at_level(logging.WARNING, logger="cvd_multiview.parallel"):
        insecure = WorkerPool("0.0.0.0", 0, store_port=1).start()
    insecure.stop()
    assert "WITHOUT a token" in caplog.text
    WorkerPool("0.0.0.0", 0, store_port=1, token=TOKEN).start().stop()
    with pytest.raises(auth.AuthError, match="at least 16 characters, got 5"):
        auth.load_token("short")
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert auth.load_token(token_file=str(path)) == TOKEN
    with pytest.raises(auth.AuthError, match="cannot be read"):
        auth.load_token(token_file=str(tmp_path / "missing"))
    monkeypatch.setenv("CVD_DIST_TOKEN", TOKEN)
    assert auth.load_token() == TOKEN

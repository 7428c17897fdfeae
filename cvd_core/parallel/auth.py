"""Who may join the worker cluster: a shared token, proven by HMAC challenge-response at hello.

The token (``CVD_DIST_TOKEN``, or a file named by ``CVD_DIST_TOKEN_FILE`` / the worker's
``--token-file``) never travels: at hello each side sends a random nonce and proves it knows the
token by ``HMAC-SHA256(token, role | server nonce | worker nonce)``. The server proves itself too,
so a worker never computes for a server that does not hold the token.

What this does not give: confidentiality. After the handshake the control channel and the job's
``torch.distributed`` traffic (gloo/NCCL) are plain TCP; see docs/security.md for what to fence.

A server with no token listens on loopback only, unless ``CVD_DIST_INSECURE=1`` says otherwise (a
warning is logged): anyone who reaches an open port could otherwise join and receive every job.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
from typing import Optional

LOG = logging.getLogger("cvd_multiview.parallel")

MIN_TOKEN_CHARS = 16
NONCE_BYTES = 32


class AuthError(ValueError):
    """A token setting that cannot be used, or a listen address that needs a token."""


def load_token(token: Optional[str] = None, token_file: Optional[str] = None) -> Optional[str]:
    """The shared token from the arguments, else ``CVD_DIST_TOKEN`` / ``CVD_DIST_TOKEN_FILE``; None if unset."""
    token = token if token is not None else os.environ.get("CVD_DIST_TOKEN") or None
    token_file = token_file or os.environ.get("CVD_DIST_TOKEN_FILE") or None
    if token is None and token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise AuthError(f"token file {token_file!r} cannot be read: {exc}") from None
    if token is None:
        return None
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise AuthError(f"the worker token must have at least {MIN_TOKEN_CHARS} characters, got {len(token)} (make "
                        "one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\")")
    return token


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_listen(host: str, token: Optional[str], insecure: Optional[bool] = None) -> None:
    """Refuse a non-loopback listen address without a token (unless ``CVD_DIST_INSECURE=1``)."""
    if token is not None or is_loopback(host):
        return
    if insecure is None:
        insecure = os.environ.get("CVD_DIST_INSECURE", "") not in ("", "0")
    if not insecure:
        raise AuthError(f"listening for workers on {host!r} (not loopback) needs a shared token: set CVD_DIST_TOKEN "
                        "(or CVD_DIST_TOKEN_FILE) on the server and on every worker, or listen on 127.0.0.1; "
                        "CVD_DIST_INSECURE=1 accepts any worker that reaches the port (not recommended)")
    LOG.warning("cvd-multiview: CVD_DIST_INSECURE=1: listening for workers on %s WITHOUT a token; any host that "
                "reaches this port can join and receives every job's latents, prompts and cameras", host)


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def proof(token: str, role: str, server_nonce: str, worker_nonce: str) -> str:
    """``role`` is ``server`` or ``worker``: the two proofs differ, so neither can be replayed as the other."""
    message = f"cvd-dist/1|{role}|{server_nonce}|{worker_nonce}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def verify(token: str, role: str, server_nonce: str, worker_nonce: str, given) -> bool:
    return isinstance(given, str) and hmac.compare_digest(proof(token, role, server_nonce, worker_nonce), given)

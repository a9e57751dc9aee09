"""Local ports for servers a process starts itself (tests, benchmarks, the walkthrough)."""

from __future__ import annotations

import socket
import threading

_GIVEN: set[int] = set()
_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A free port on ``host`` that this process has not handed out before.

    The kernel may give the same port to two binds in a row once the first socket is closed, and a
    server given two equal ports fails (Triton exits: 'cannot listen to HTTP requests and GRPC
    requests at the same address and port'), so every port is handed out once per process.
    """
    with _LOCK:
        while True:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _GIVEN:
                _GIVEN.add(port)
                return port

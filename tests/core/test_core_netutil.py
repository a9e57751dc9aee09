"""free_port hands out bindable ports, each once per process."""

from __future__ import annotations

import socket

from domain_embed.netutil import free_port


def test_ports_are_bindable_and_never_handed_out_twice():
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:   # what it hands out is free: a server can listen on it
        s.bind(("127.0.0.1", ports[-1]))
        s.listen()

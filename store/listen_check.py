"""Whether a daemon's port is free, asked before anything is created: a daemon started on
a taken port used to leave a new data directory behind and print grpc's own `add_port.cc`
line. grpc binds again itself (someone may take the port in between; that is still
refused, with grpc's words)."""

from __future__ import annotations

import errno
import socket


def port_in_use(host: str, port: int) -> bool:
    """Whether another socket listens on `port` at one of `host`'s addresses (port 0, any
    free port, never is)."""
    if port == 0:
        return False
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # grpc reports a host it cannot resolve
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # As grpc binds: a port left in TIME_WAIT by a daemon just stopped is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
    return False

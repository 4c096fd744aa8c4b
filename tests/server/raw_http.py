"""HTTP/1.1 spoken by hand over a socket: for clients no library would be (slow, cut off)."""

from __future__ import annotations

import select
import socket
import time

from ..conftest import API_KEY

HEAD = (
    b"POST /v1/images/generations HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
    b"authorization: Bearer " + API_KEY.encode() + b"\r\n"
)


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """(bytes received, whether the server closed the connection) within `timeout_s`."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def drip_until_closed(sock: socket.socket, payload: bytes, every_s: float, timeout_s: float) -> tuple[bytes, bool]:
    """Send `payload` a byte at a time; stop when the server answers or closes."""
    deadline = time.monotonic() + timeout_s
    for byte in payload * 100:
        if time.monotonic() > deadline:
            return b"", False
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return read_until_closed(sock, 1.0)[0], True
        if select.select([sock], [], [], every_s)[0]:
            return read_until_closed(sock, 2.0)
    return b"", False


def get_body(url: str, path: str) -> bytes:
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n".encode())
        answer, _ = read_until_closed(sock, 5)
    return answer.partition(b"\r\n\r\n")[2]

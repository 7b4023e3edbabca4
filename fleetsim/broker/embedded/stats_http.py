"""A tiny loopback HTTP endpoint for a broker's counters: ``GET /stats`` and ``POST /reload-crl`` (JSON).

Just enough HTTP/1.0 for curl, urllib and the process handle; one request per connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

Route = Callable[[], dict[str, Any]]
_STATUS = {200: "OK", 404: "Not Found", 400: "Bad Request", 500: "Internal Server Error"}


async def start_json_server(host: str, port: int, routes: dict[tuple[str, str], Route]) -> asyncio.Server:
    """Serve ``routes[(method, path)]()`` as JSON on host:port (port 0 = pick a free one)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            route = routes.get((method.upper(), path.split("?", 1)[0]))
            status, payload = (200, route()) if route else (404, {"error": f"no route {method} {path}"})
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, payload = 400, {"error": "bad request"}
        except Exception as exc:  # a failing route must not kill the endpoint
            status, payload = 500, {"error": str(exc)}
        body = json.dumps(payload).encode()
        head = (f"HTTP/1.0 {status} {_STATUS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)

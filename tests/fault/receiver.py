"""A webhook receiver on loopback that misbehaves by path: `/ok` answers 200 at once, `/slow` answers
only after `slow_s` (longer than the notify consumer's timeout), `/crash` drops the connection without
an answer, as a receiver that crashes mid-request does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hit:
    path: str
    event_id: str
    at: float  # monotonic


@dataclass
class Receiver:
    slow_s: float = 1.5
    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            await reader.readexactly(int(headers.get("content-length", "0")))
            path = head[0].split(" ")[1]
            self.hits.append(Hit(path, headers.get("webhook-id", ""), time.monotonic()))
            if path == "/crash":
                writer.transport.abort()  # no answer: a connection reset mid-request
                return
            if path == "/slow":
                await asyncio.sleep(self.slow_s)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._tasks.discard(task)

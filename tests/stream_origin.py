"""An origin for streaming tests, run as a subprocess: big bodies, fast.

    python tests/stream_origin.py PORT_FILE

Listens on 127.0.0.1 (a free port, written to PORT_FILE) and serves:

* ``GET /big?size=N[&store=1]``: N bytes of a repeating pattern, with
  Content-Length; ``Cache-Control: no-store`` unless ``store=1``
  (then ``max-age=60``);
* ``POST /upload``: reads the whole request body (Content-Length or chunked)
  and answers with the number of bytes received.

asyncio and a hand-written HTTP/1.1 subset keep it fast and independent of
the code under test.
"""

from __future__ import annotations

import asyncio
import sys

PATTERN = bytes(range(256)) * 256  # 64 KiB


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> int:
    total = 0
    if "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining:
            chunk = await reader.read(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionError("short body")
            remaining -= len(chunk)
            total += len(chunk)
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                break
            remaining = size
            while remaining:
                chunk = await reader.read(min(remaining, 1 << 20))
                if not chunk:
                    raise ConnectionError("short chunk")
                remaining -= len(chunk)
            total += size
            await reader.readline()
    return total


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await read_head(reader)
            if head is None:
                return
            method, target, headers = head
            if method == "POST":
                received = await read_body(reader, headers)
                body = b"%d" % received
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ncache-control: no-store\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                continue
            query = dict(p.split("=", 1) for p in target.partition("?")[2].split("&") if "=" in p)
            size = int(query.get("size", "0"))
            cc = b"max-age=60" if query.get("store") == "1" else b"no-store"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ncache-control: %s\r\n\r\n" % (size, cc))
            left = size
            while left:
                piece = PATTERN[: min(left, len(PATTERN))]
                writer.write(piece)
                left -= len(piece)
                await writer.drain()
    except (ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port_file: str) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    import os

    os.replace(port_file + ".tmp", port_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

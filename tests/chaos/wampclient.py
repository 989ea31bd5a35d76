"""A small WebSocket + WAMP v2 (JSON) subscriber on plain sockets.

Written here rather than taken from a library so the suite controls every
byte: it records the close code it actually received (or that the
connection just ended, 1006), and the stalled reader can stop calling recv
with a small SO_RCVBUF.

- `Reactor`: one asyncio loop in a background thread hosting many `Subscriber`s.
- `Subscriber`: HELLO, SUBSCRIBE, then records every EVENT as
  (stream, seq, publication id) from args = [stream, seq, ...].
- `StalledSubscriber`: a blocking-socket subscriber that stops reading after
  SUBSCRIBED, then `resume()`s and reads everything to the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
import time

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

HELLO_DETAILS = {"roles": {"subscriber": {}, "publisher": {}}}


class HandshakeError(Exception):
    def __init__(self, status: int, head: str):
        super().__init__(f"WebSocket upgrade refused: HTTP {status}: {head[:300]}")
        self.status = status


def handshake_request(host: str, port: int, path: str, protocols) -> tuple[bytes, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\n\r\n")
    return req.encode(), key


def check_handshake(head: bytes) -> str:
    text = head.decode("latin-1")
    status = int(text.split(" ", 2)[1])
    if status != 101:
        raise HandshakeError(status, text)
    for line in text.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "sec-websocket-protocol":
            return v.strip()
    return ""


def encode_frame(op: int, payload: bytes) -> bytes:
    """A masked client frame."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | op, 0x80 | n])
    elif n < 65536:
        header = bytes([0x80 | op, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | op, 0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if n:
        m = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "little") ^ int.from_bytes(m, "little")).to_bytes(n, "little")
    return header + mask + payload


def parse_frames(buf: bytearray, pos: int) -> tuple[list[tuple[bool, int, bytes]], int]:
    """Every complete frame in buf[pos:]; returns them and the new position."""
    frames = []
    n = len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        length = b1 & 0x7F
        i = pos + 2
        if length == 126:
            if n - i < 2:
                break
            length = int.from_bytes(buf[i:i + 2], "big")
            i += 2
        elif length == 127:
            if n - i < 8:
                break
            length = int.from_bytes(buf[i:i + 8], "big")
            i += 8
        mask = None
        if b1 & 0x80:
            if n - i < 4:
                break
            mask = bytes(buf[i:i + 4])
            i += 4
        if n - i < length:
            break
        payload = bytes(buf[i:i + length])
        if mask:
            m = (mask * (length // 4 + 1))[:length]
            payload = (int.from_bytes(payload, "little") ^ int.from_bytes(m, "little")).to_bytes(length, "little")
        frames.append((bool(b0 & 0x80), b0 & 0x0F, payload))
        pos = i + length
    return frames, pos


def close_payload(payload: bytes) -> tuple[int, str]:
    if len(payload) >= 2:
        return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")
    return 1005, ""


class MessageAssembler:
    """Turns frames into (opcode, payload) messages; handles fragmentation."""

    def __init__(self):
        self._op = None
        self._parts: list[bytes] = []

    def feed(self, fin: bool, op: int, payload: bytes):
        if op in (OP_TEXT, OP_BIN):
            if fin:
                return op, payload
            self._op, self._parts = op, [payload]
            return None
        if op == OP_CONT:
            self._parts.append(payload)
            if fin:
                op, self._op = self._op, None
                data, self._parts = b"".join(self._parts), []
                return op, data
        return None


class ConnectionEnded(Exception):
    pass


class AsyncWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str, leftover: bytes):
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.buf = bytearray(leftover)
        self.pos = 0
        self.pending: list = []
        self.asm = MessageAssembler()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.close_sent = False

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/ws", protocols=("wamp.2.json",), *,
                      local_addr: str | None = None, headers: dict[str, str] | None = None,
                      ssl_context=None, server_hostname: str | None = None) -> "AsyncWebSocket":
        """Opens a WebSocket; `local_addr` binds the client's side (another
        loopback address), `headers` go with the upgrade request, `ssl_context`
        makes it wss:// (checked against `server_hostname`)."""
        tls = {"ssl": ssl_context, "server_hostname": server_hostname or host} if ssl_context else {}
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22,
                                                       local_addr=(local_addr, 0) if local_addr else None, **tls)
        req, _ = handshake_request(host, port, path, protocols)
        if headers:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            req = req[:-2] + extra.encode() + b"\r\n"
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        try:
            protocol = check_handshake(head)
        except HandshakeError:
            writer.close()
            raise
        return cls(reader, writer, protocol, b"")

    async def send_text(self, text: str) -> None:
        self.writer.write(encode_frame(OP_TEXT, text.encode()))
        await self.writer.drain()

    async def send_json(self, msg) -> None:
        await self.send_text(json.dumps(msg))

    async def recv(self):
        """The next data message (opcode, payload), or None once a close frame came.
        Raises ConnectionEnded when the connection ended without a close frame."""
        while True:
            while self.pending:
                fin, op, payload = self.pending.pop(0)
                if op == OP_PING:
                    self.writer.write(encode_frame(OP_PONG, payload))
                    continue
                if op == OP_PONG:
                    continue
                if op == OP_CLOSE:
                    self.close_code, self.close_reason = close_payload(payload)
                    if not self.close_sent:
                        self.close_sent = True
                        try:
                            self.writer.write(encode_frame(OP_CLOSE, payload[:2]))
                        except Exception:  # noqa: BLE001
                            pass
                    return None
                msg = self.asm.feed(fin, op, payload)
                if msg is not None:
                    return msg
            data = await self.reader.read(1 << 18)
            if not data:
                raise ConnectionEnded()
            if self.pos > 1 << 20:
                del self.buf[:self.pos]
                self.pos = 0
            self.buf += data
            frames, self.pos = parse_frames(self.buf, self.pos)
            self.pending.extend(frames)

    def abort(self) -> None:
        try:
            self.writer.transport.abort()
        except Exception:  # noqa: BLE001
            pass


class Subscriber:
    """One WAMP session that subscribes to `topics` and records every EVENT."""

    def __init__(self, name: str, host: str, port: int, topics, *, realm: str = "realm1", match: str | None = None):
        self.name = name
        self.host, self.port = host, port
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.realm = realm
        self.match = match
        self.events: list[tuple] = []          # (stream, seq, publication id)
        self.pubids: set[int] = set()
        self.ready = threading.Event()          # set once SUBSCRIBED (or failed)
        self.done = threading.Event()           # set once the connection ended
        self.error: str | None = None
        self.session_id: int | None = None
        self.subscription_ids: list[int] = []
        self.close_code: int | None = None      # the close frame's code; None if none came
        self.close_reason: str | None = None
        self.ended_without_close = False        # TCP ended with no close frame (1006)
        self.goodbye: str | None = None         # reason URI of a GOODBYE the gateway sent
        self.abort: str | None = None
        self.ws: AsyncWebSocket | None = None
        self._task = None

    @property
    def seen_code(self) -> int | None:
        """The close code as a client would report it: the frame's, or 1006."""
        if self.close_code is not None:
            return self.close_code
        return 1006 if self.ended_without_close else None

    def streams(self, stream: str) -> list[int]:
        return [seq for (s, seq, _) in self.events if s == stream]

    async def run(self) -> None:
        try:
            self.ws = ws = await AsyncWebSocket.connect(self.host, self.port)
            await ws.send_json([1, self.realm, HELLO_DETAILS])
            msg = await self._next(ws)
            if msg is None or msg[0] != 2:
                raise RuntimeError(f"expected WELCOME, got {msg!r}")
            self.session_id = msg[1]
            opts = {"match": self.match} if self.match else {}
            for i, topic in enumerate(self.topics):
                await ws.send_json([32, i + 1, opts, topic])
            pending = set(range(1, len(self.topics) + 1))
            while pending:
                msg = await self._next(ws)
                if msg is None:
                    raise RuntimeError("closed before SUBSCRIBED")
                if msg[0] == 33:
                    pending.discard(msg[1])
                    self.subscription_ids.append(msg[2])
                elif msg[0] == 8:
                    raise RuntimeError(f"SUBSCRIBE refused: {msg!r}")
                else:
                    self._handle(msg)
            self.ready.set()
            while True:
                msg = await self._next(ws)
                if msg is None:
                    break
                self._handle(msg)
                if msg[0] == 6:
                    # The gateway said GOODBYE (drain): answer as a WAMP client does.
                    try:
                        await ws.send_json([6, {}, "wamp.close.goodbye_and_out"])
                    except Exception:  # noqa: BLE001
                        pass
        except ConnectionEnded:
            self.ended_without_close = True
        except (ConnectionError, OSError) as e:
            self.ended_without_close = True
            if not self.ready.is_set():
                self.error = f"{type(e).__name__}: {e}"
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}"
        finally:
            if self.ws is not None:
                self.close_code = self.ws.close_code
                self.close_reason = self.ws.close_reason
                try:
                    self.ws.writer.close()
                except Exception:  # noqa: BLE001
                    pass
            self.ready.set()
            self.done.set()

    async def _next(self, ws: AsyncWebSocket):
        m = await ws.recv()
        if m is None:
            return None
        return json.loads(m[1])

    def _handle(self, msg) -> None:
        code = msg[0]
        if code == 36:
            pubid = msg[2]
            args = msg[4] if len(msg) > 4 else []
            if len(args) >= 2:
                self.events.append((args[0], args[1], pubid))
            else:
                self.events.append((None, None, pubid))
            self.pubids.add(pubid)
        elif code == 6:
            self.goodbye = msg[2]
        elif code == 3:
            self.abort = msg[2]


class Reactor:
    """An asyncio loop in a background thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="reactor")
        self.thread.start()
        self.subscribers: list[Subscriber] = []

    def call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, subs: list[Subscriber], timeout: float = 60.0) -> list[Subscriber]:
        """Connects and subscribes every subscriber; raises if one failed."""
        for s in subs:
            self.subscribers.append(s)

            async def go(s=s):
                s._task = asyncio.current_task()
                await s.run()
            asyncio.run_coroutine_threadsafe(go(), self.loop)
        deadline = time.monotonic() + timeout
        for s in subs:
            if not s.ready.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"subscriber {s.name} not subscribed within {timeout}s")
            if s.error:
                raise RuntimeError(f"subscriber {s.name} failed: {s.error}")
        return subs

    def close_one(self, s: Subscriber) -> None:
        """Ends one subscriber's connection abruptly (TCP close)."""
        async def go():
            if s.ws is not None:
                s.ws.abort()
            if s._task is not None:
                s._task.cancel()
        self.call(go(), timeout=10)
        s.done.wait(10)

    def stop(self) -> None:
        async def cancel_all():
            for s in self.subscribers:
                if s.ws is not None:
                    s.ws.abort()
                if s._task is not None and not s._task.done():
                    s._task.cancel()
            await asyncio.sleep(0.05)
        try:
            self.call(cancel_all(), timeout=10)
        except Exception:  # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class StalledSubscriber:
    """A subscriber on a blocking socket with a small receive buffer that stops
    reading after SUBSCRIBED (`stalled`), then `resume()`s: reads everything
    to the end of the connection, recording events and the close frame."""

    def __init__(self, name: str, host: str, port: int, topic: str, *, rcvbuf: int = 4096, realm: str = "realm1"):
        self.name = name
        self.host, self.port, self.topic, self.rcvbuf, self.realm = host, port, topic, rcvbuf, realm
        self.events: list[tuple] = []
        self.pubids: set[int] = set()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ended_without_close = False
        self.saw_close_frame = False
        self.error: str | None = None
        self.bytes_read = 0
        self.eof = False
        self.queue: list = []
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.pos = 0
        self.asm = MessageAssembler()

    @property
    def seen_code(self) -> int | None:
        if self.close_code is not None:
            return self.close_code
        return 1006 if self.ended_without_close else None

    def streams(self, stream: str) -> list[int]:
        return [seq for (s, seq, _) in self.events if s == stream]

    @property
    def partial_frame_bytes(self) -> int:
        """Bytes of an incomplete last frame (the connection ended in the middle of it)."""
        return len(self.buf) - self.pos

    @property
    def done(self) -> threading.Event:
        e = threading.Event()
        if self.eof or self.saw_close_frame or self.sock is None:
            e.set()
        return e

    def connect(self, timeout: float = 30.0) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)  # before connect: sets the window
        s.settimeout(timeout)
        s.connect((self.host, self.port))
        self.sock = s
        req, _ = handshake_request(self.host, self.port, "/ws", ("wamp.2.json",))
        s.sendall(req)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionEnded("closed during the upgrade")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        check_handshake(head + b"\r\n\r\n")
        self._ingest(rest)
        self._send([1, self.realm, HELLO_DETAILS])
        msg = self._next_message()
        if msg is None or msg[0] != 2:
            raise RuntimeError(f"expected WELCOME, got {msg!r}")
        self._send([32, 1, {}, self.topic])
        while True:
            msg = self._next_message()
            if msg is None:
                raise RuntimeError("closed before SUBSCRIBED")
            if msg[0] == 33:
                break
            self._handle(msg)
        # From here on: stalled. Nothing reads the socket until resume().

    def _send(self, msg) -> None:
        assert self.sock is not None
        self.sock.sendall(encode_frame(OP_TEXT, json.dumps(msg).encode()))

    def _ingest(self, data: bytes) -> None:
        self.buf += data
        frames, self.pos = parse_frames(self.buf, self.pos)
        for fin, op, payload in frames:
            if self.saw_close_frame:
                continue
            if op == OP_CLOSE:
                self.saw_close_frame = True
                self.close_code, self.close_reason = close_payload(payload)
                try:
                    self.sock.sendall(encode_frame(OP_CLOSE, payload[:2]))
                except OSError:
                    pass
            elif op == OP_PING:
                try:
                    self.sock.sendall(encode_frame(OP_PONG, payload))
                except OSError:
                    pass
            elif op != OP_PONG:
                msg = self.asm.feed(fin, op, payload)
                if msg is not None:
                    self.queue.append(json.loads(msg[1]))

    def _next_message(self):
        while not self.queue:
            if self.saw_close_frame or self.eof:
                return None
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                self.eof = True
                self.ended_without_close = not self.saw_close_frame
                return None
            self.bytes_read += len(chunk)
            self._ingest(chunk)
        return self.queue.pop(0)

    def _handle(self, msg) -> None:
        if msg[0] == 36:
            args = msg[4] if len(msg) > 4 else []
            self.events.append((args[0], args[1], msg[2]) if len(args) >= 2 else (None, None, msg[2]))
            self.pubids.add(msg[2])

    def resume(self, timeout: float = 60.0) -> None:
        """Reads to the end: events, then a close frame (recorded) or the end of the connection."""
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            while True:
                msg = self._next_message()
                if msg is None:
                    break
                self._handle(msg)
            # After a close frame: read on until the gateway ends TCP.
            if self.saw_close_frame:
                try:
                    while self.sock.recv(1 << 16):
                        pass
                except OSError:
                    pass
        except (ConnectionResetError, BrokenPipeError):
            self.ended_without_close = not self.saw_close_frame
        except socket.timeout:
            self.error = f"no end of connection within {timeout}s"
        finally:
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


# --- small async helpers for tests that drive a few sessions themselves ----------

async def session(port: int, client: str, topic: str, headers: dict[str, str] | None = None, *,
                  ssl_context=None, server_hostname: str | None = None) -> AsyncWebSocket:
    """A WAMP session from loopback address `client` to `port`, subscribed to `topic`."""
    ws = await asyncio.wait_for(AsyncWebSocket.connect("127.0.0.1", port, local_addr=client, headers=headers,
                                                       ssl_context=ssl_context, server_hostname=server_hostname), 10)
    await ws.send_json([1, "realm1", {"roles": {"subscriber": {}}}])
    welcome = json.loads((await asyncio.wait_for(ws.recv(), 10))[1])
    assert welcome[0] == 2, welcome
    await ws.send_json([32, 1, {}, topic])
    subscribed = json.loads((await asyncio.wait_for(ws.recv(), 10))[1])
    assert subscribed[0] == 33, subscribed
    return ws


async def events_within(ws: AsyncWebSocket, seconds: float) -> list[int]:
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(ws.recv(), left)
        except asyncio.TimeoutError:
            break
        if msg is None:
            break
        m = json.loads(msg[1])
        if m[0] == 36:
            got.append(m[4][0])
    return got

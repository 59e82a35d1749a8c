"""A TCP proxy that damages the bytes going through it, to test the control protocol's
recovery: drops, bit flips, duplicates and delays, from a seeded generator, bounded in number.

    with FaultyLink(board.url, seed=1, rate=0.002, max_faults=50) as link:
        dev = Device(link.url)
        ...
    link.faults  # what was done: [(direction, kind, byte offset), ...]

One connection at a time, like the virtual board behind it.
"""

import random
import socket
import threading
import time
from urllib.parse import urlsplit

__all__ = ["FaultyLink"]

KINDS = ("drop", "flip", "duplicate", "delay")


class FaultyLink:
    """Proxy ``socket://`` URL :attr:`url` to ``upstream`` (a ``socket://`` URL).

    Each byte in either direction is damaged with probability ``rate`` (one of ``kinds``,
    chosen at random), until ``max_faults`` faults have been made; a delay holds the rest of
    the chunk back for up to ``max_delay`` seconds. ``directions`` picks ``"to_device"``,
    ``"to_host"`` or both.
    """

    def __init__(self, upstream, *, seed=0, rate=0.001, max_faults=100, kinds=KINDS,
                 max_delay=0.05, directions=("to_device", "to_host")):
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname, parts.port)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.rate = rate
        self.max_faults = max_faults
        self.kinds = tuple(kinds)
        self.max_delay = max_delay
        self.directions = tuple(directions)
        self.faults = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self):
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            done = threading.Event()
            for src, dst, name in ((client, server, "to_device"), (server, client, "to_host")):
                thread = threading.Thread(target=self._pump, args=(src, dst, name, done),
                                          daemon=True)
                thread.start()
                self._threads.append(thread)
            done.wait()
            for sock in (client, server):
                sock.close()

    def _damage(self, data, direction, offset):
        if direction not in self.directions:
            return [data]
        out = bytearray()
        parts = []
        with self._lock:
            for k, byte in enumerate(data):
                if len(self.faults) < self.max_faults and self._rng.random() < self.rate:
                    kind = self._rng.choice(self.kinds)
                    self.faults.append((direction, kind, offset + k))
                    if kind == "drop":
                        continue
                    if kind == "flip":
                        byte ^= 1 << self._rng.randrange(8)
                    elif kind == "duplicate":
                        out.append(byte)
                    elif kind == "delay":
                        parts.append(bytes(out))
                        parts.append(self._rng.uniform(0, self.max_delay))
                        out = bytearray()
                out.append(byte)
        parts.append(bytes(out))
        return parts

    def _pump(self, src, dst, direction, done):
        offset = 0
        src.settimeout(0.1)
        try:
            while not self._stop.is_set() and not done.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                for part in self._damage(data, direction, offset):
                    if isinstance(part, float):
                        time.sleep(part)
                    elif part:
                        dst.sendall(part)
                offset += len(data)
        except OSError:
            pass
        finally:
            done.set()

    def close(self):
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

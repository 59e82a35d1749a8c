"""Frames in bulk: a padded numpy batch, and classic pcap files read into and written from it.

A ``FrameBatch`` holds N frames as one zero-padded ``uint8`` matrix plus per-frame lengths,
ports and timestamps, so that the reference model works on columns, not per-frame objects.
"""

import dataclasses
import struct

import numpy as np

from .errors import PcapError

__all__ = ["FrameBatch", "read_pcap", "write_pcap", "merge_inputs"]

LINKTYPE_ETHERNET = 1
_PCAP_MAGICS = {  # magic as read little-endian -> (byte order, nanosecond timestamps)
    0xA1B2C3D4: ("<", False), 0xD4C3B2A1: (">", False),
    0xA1B23C4D: ("<", True), 0x4D3CB2A1: (">", True),
}
_PCAPNG_MAGIC = 0x0A0D0D0A
_SNAPLEN = 65535


@dataclasses.dataclass
class FrameBatch:
    """N frames: ``data`` (N, L) uint8 zero-padded, ``length`` (N,) int64, ``port`` (N,) uint8
    (a ``Port`` value), ``time_ns`` (N,) int64 timestamps."""
    data: np.ndarray
    length: np.ndarray
    port: np.ndarray
    time_ns: np.ndarray

    def __len__(self):
        return len(self.length)

    @classmethod
    def empty(cls, width=0):
        return cls(np.zeros((0, width), np.uint8), np.zeros(0, np.int64),
                   np.zeros(0, np.uint8), np.zeros(0, np.int64))

    @classmethod
    def from_frames(cls, frames, port=None, time_ns=None, min_width=0):
        """From a list of ``bytes`` (all on ``port``) or of ``(port, bytes)`` pairs."""
        if port is not None:
            frames = [(port, f) for f in frames]
        lengths = np.fromiter((len(f) for _, f in frames), np.int64, len(frames))
        width = max(int(lengths.max(initial=0)), min_width)
        data = np.zeros((len(frames), width), np.uint8)
        flat = np.frombuffer(b"".join(bytes(f) for _, f in frames), np.uint8)
        data[np.arange(width) < lengths[:, None]] = flat
        ports = np.fromiter((int(p) for p, _ in frames), np.uint8, len(frames))
        if time_ns is None:
            time_ns = np.arange(len(frames), dtype=np.int64)
        return cls(data, lengths, ports, np.asarray(time_ns, np.int64))

    def frames(self):
        """The frames as a list of ``bytes``."""
        return [self.data[i, :n].tobytes() for i, n in enumerate(self.length.tolist())]

    def take(self, index):
        """The frames at ``index`` (an index array or boolean mask), in that order."""
        return FrameBatch(self.data[index], self.length[index], self.port[index],
                          self.time_ns[index])

    def packed(self):
        """All frames' bytes concatenated, in order."""
        return self.data[np.arange(self.data.shape[1]) < self.length[:, None]]

    @staticmethod
    def concat(batches):
        batches = [b for b in batches if len(b)]
        if not batches:
            return FrameBatch.empty()
        if len(batches) == 1:
            return batches[0]
        width = max(b.data.shape[1] for b in batches)
        data = np.zeros((sum(len(b) for b in batches), width), np.uint8)
        row = 0
        for b in batches:
            data[row:row + len(b), :b.data.shape[1]] = b.data
            row += len(b)
        return FrameBatch(data, np.concatenate([b.length for b in batches]),
                          np.concatenate([b.port for b in batches]),
                          np.concatenate([b.time_ns for b in batches]))


def read_pcap(path, port):
    """Read a classic pcap file of Ethernet frames into a FrameBatch on ``port``.

    Raises PcapError naming the file (and the record) for anything unreadable or corrupt.
    """
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise PcapError(f"{path}: cannot read pcap: {exc.strerror}") from None
    if len(blob) < 24:
        raise PcapError(f"{path}: not a pcap file (only {len(blob)} bytes, a pcap header "
                        "needs 24)")
    magic, = struct.unpack_from("<I", blob)
    if magic == _PCAPNG_MAGIC:
        raise PcapError(f"{path}: pcapng is not supported; convert it with "
                        f"`editcap -F pcap {path} out.pcap`")
    if magic not in _PCAP_MAGICS:
        raise PcapError(f"{path}: not a pcap file (magic 0x{magic:08x})")
    order, nanos = _PCAP_MAGICS[magic]
    linktype = struct.unpack_from(order + "I", blob, 20)[0] & 0x0FFFFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"{path}: link type {linktype} is not Ethernet (1)")
    record = struct.Struct(order + "IIII")
    times, offsets, lengths = [], [], []
    pos, count = 24, 0
    while pos < len(blob):
        count += 1
        if pos + 16 > len(blob):
            raise PcapError(f"{path}: record {count} at byte {pos}: truncated record header")
        sec, frac, incl, orig = record.unpack_from(blob, pos)
        if incl > _SNAPLEN or pos + 16 + incl > len(blob):
            raise PcapError(f"{path}: record {count} at byte {pos}: truncated or corrupt "
                            f"(claims {incl} bytes)")
        if incl < orig:
            raise PcapError(f"{path}: record {count}: frame was captured truncated "
                            f"({incl} of {orig} bytes); capture with a larger snaplen")
        times.append(sec * 1_000_000_000 + (frac if nanos else frac * 1000))
        offsets.append(pos + 16)
        lengths.append(incl)
        pos += 16 + incl
    lengths = np.asarray(lengths, np.int64)
    width = int(lengths.max(initial=0))
    data = np.zeros((len(lengths), width), np.uint8)
    if len(lengths):
        raw = np.frombuffer(blob, np.uint8)
        starts = np.asarray(offsets, np.int64)
        cols = np.arange(width)
        mask = cols < lengths[:, None]
        data[mask] = raw[(starts[:, None] + cols)[mask]]
    return FrameBatch(data, lengths, np.full(len(lengths), int(port), np.uint8),
                      np.asarray(times, np.int64))


def write_pcap(path, batch, nanos=False):
    """Write a FrameBatch as a classic little-endian pcap (microsecond timestamps unless
    ``nanos``), records in batch order."""
    header = struct.pack("<IHHiIII", 0xA1B23C4D if nanos else 0xA1B2C3D4, 2, 4, 0, 0,
                         _SNAPLEN, LINKTYPE_ETHERNET)
    n = len(batch)
    rec = np.zeros((n, 4), np.uint32)
    rec[:, 0] = batch.time_ns // 1_000_000_000
    rem = batch.time_ns % 1_000_000_000
    rec[:, 1] = rem if nanos else rem // 1000
    rec[:, 2] = batch.length
    rec[:, 3] = batch.length
    rows = np.concatenate([rec.astype("<u4").view(np.uint8).reshape(n, 16), batch.data], axis=1)
    mask = np.arange(rows.shape[1]) < (batch.length + 16)[:, None]
    with open(path, "wb") as f:
        f.write(header)
        f.write(rows[mask].tobytes())


def merge_inputs(batches):
    """Merge per-port input batches into arrival order: by timestamp, stable, and at equal
    times in port order (host before net)."""
    batches = sorted((b for b in batches if len(b)), key=lambda b: int(b.port[0]))
    merged = FrameBatch.concat(batches)
    order = np.lexsort((merged.port, merged.time_ns))
    return merged.take(order)


"""The reference VTEP: the executable definition of what openvtep does to every frame.

Implements docs/semantics.md (which pins down ../shared/DESIGN.md "Ports and semantics") as a
batch engine over numpy columns: frames are parsed, classified and edited as whole arrays,
never one Python object per frame. The gateware must equal this model frame for frame, byte for
byte, per output port, in order.

    ref = Reference(config, ruleset)
    result = ref.run(FrameBatch.from_frames([(Port.HOST, frame), ...]))
    result.outputs[Port.NET]   # FrameBatch of the frames emitted on net, in order
    result.stats               # the stats.json dictionary

Classification is a tuple-space search (as in Open vSwitch): rules are grouped by the set of
fields and masks they match on; each group is one exact-match hash lookup over all frames.
"""

import dataclasses

import numpy as np

from .frames import FrameBatch
from .headers import (
    ENCAP_BYTES,
    ETHERTYPE_IPV4,
    ETHERTYPE_VLAN,
    IN_PORT_CODE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_DF,
    IPV4_FRAG_OFFSET,
    IPV4_MF,
    NO_VLAN,
    VXLAN_FLAG_I,
    DropReason,
    Port,
    ipv4_checksum,
    tunnel_src_port,
)
from .rules import VlanOp

__all__ = ["Reference", "Result", "Parsed", "parse"]

CHUNK_BYTES = 1 << 22    # frame bytes per internal batch: bounds memory, stays in cache
_WINDOW = 18 + 60 + 4   # header bytes examined: L2 with tag + longest IPv4 header + L4 ports


def _be(cols):
    """Big-endian integer of each row of a (N, n) uint8 matrix (n <= 8), as uint64."""
    n = cols.shape[1]
    if n in (1, 2, 4, 8):
        if cols.strides[1] != 1:
            cols = np.ascontiguousarray(cols)
        return cols.view(f">u{n}")[:, 0].astype(np.uint64)
    padded = np.zeros((len(cols), 8), np.uint8)
    padded[:, 8 - n:] = cols
    return padded.view(">u8")[:, 0].astype(np.uint64)


def _to_bytes(values, n):
    """(N,) integers -> (N, n) uint8 big-endian."""
    return np.asarray(values).astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - n:]


def _window(data, start, n):
    """Bytes [start, start + n) of each row (start: int or (N,) array), zero beyond the row."""
    rows, width = data.shape
    if not np.isscalar(start) and len(start) and (start == start[0]).all():
        start = int(start[0])
    if np.isscalar(start):
        out = np.zeros((rows, n), np.uint8)
        have = max(0, min(n, width - start))
        out[:, :have] = data[:, start:start + have]
        return out
    index = np.asarray(start)[:, None] + np.arange(n)
    out = np.take_along_axis(data, np.minimum(index, width - 1), axis=1)
    out[index >= width] = 0
    return out


def _where(cond, a, b):
    """np.where for a per-row condition, without the copy when every row agrees."""
    if not cond.any():
        return b
    if cond.all():
        return a
    return np.where(cond[:, None] if a.ndim == 2 else cond, a, b)


@dataclasses.dataclass
class Parsed:
    """Per-frame parse results (docs/semantics.md steps 1-3), all (N,) arrays.

    ``drop`` is -1 or a DropReason; the other fields are meaningful where ``drop`` is -1.
    ``inner_off``/``inner_len`` locate the frame that is matched (the inner frame if
    ``decap``). Absent fields (``nw_*`` without ``has_ip``, ``tp_*`` without ``has_l4``) are 0.
    """
    drop: np.ndarray
    decap: np.ndarray
    inner_off: np.ndarray
    inner_len: np.ndarray
    tun_id: np.ndarray
    tun_src: np.ndarray
    in_port: np.ndarray
    dl_dst: np.ndarray
    dl_src: np.ndarray
    tagged: np.ndarray
    tci: np.ndarray
    dl_vlan: np.ndarray
    dl_type: np.ndarray
    has_ip: np.ndarray
    nw_src: np.ndarray
    nw_dst: np.ndarray
    nw_proto: np.ndarray
    has_l4: np.ndarray
    tp_src: np.ndarray
    tp_dst: np.ndarray

    def field(self, name):
        """Values of match field ``name`` and where the frame has it."""
        value = {"in_port": self.in_port}.get(name, None)
        value = getattr(self, name) if value is None else value
        valid = self.has_ip if name.startswith("nw_") else \
            self.has_l4 if name.startswith("tp_") else np.ones(len(value), bool)
        return value.astype(np.uint64), valid


def parse(batch, config):
    """Parse, validate and (on net) decapsulate each frame of ``batch``."""
    data, length = batch.data, batch.length.astype(np.int64)
    n = len(length)
    drop = np.full(n, -1, np.int16)

    def fail(where, reason):
        drop[where & (drop < 0)] = reason

    fail(length < 14, DropReason.RUNT)
    fail(length > config.max_frame, DropReason.OVERSIZE)
    outer = _window(data, 0, _WINDOW)  # also the inner headers of frames not decapsulated
    tagged_o = _be(outer[:, 12:14]) == ETHERTYPE_VLAN
    fail(tagged_o & (length < 18), DropReason.TRUNCATED)
    etype = np.where(tagged_o, _be(outer[:, 16:18]), _be(outer[:, 12:14]))
    l2o = np.where(tagged_o, 18, 14)
    ip = _where(tagged_o, outer[:, 18:38], outer[:, 14:34])
    udp = _where(tagged_o, outer[:, 38:46], outer[:, 34:42])
    vxlan = _where(tagged_o, outer[:, 46:54], outer[:, 42:50])
    total_length = _be(ip[:, 2:4]).astype(np.int64)
    candidate = ((drop < 0) & (batch.port == Port.NET) & (etype == ETHERTYPE_IPV4)
                 & (length >= l2o + 20) & (_be(ip[:, 16:20]) == config.local_ip)
                 & (ip[:, 9] == IPPROTO_UDP))
    fail(candidate & (ip[:, 0] != 0x45), DropReason.BAD_IP_HEADER)
    if candidate.any():  # the checksum only matters for frames addressed to the VTEP
        bad_sum = np.zeros(n, bool)
        bad_sum[candidate] = ipv4_checksum(ip[candidate]) != 0
        fail(bad_sum, DropReason.BAD_IP_CHECKSUM)
    fail(candidate & (total_length != length - l2o), DropReason.BAD_IP_LENGTH)
    fail(candidate & (_be(ip[:, 6:8]) & (IPV4_MF | IPV4_FRAG_OFFSET) != 0),
         DropReason.IP_FRAGMENT)
    fail(candidate & (length < l2o + 28), DropReason.TRUNCATED)
    tunnel = candidate & (drop < 0) & (_be(udp[:, 2:4]) == config.udp_port)
    fail(tunnel & (_be(udp[:, 4:6]).astype(np.int64) != total_length - 20),
         DropReason.BAD_UDP_LENGTH)
    fail(tunnel & (length < l2o + ENCAP_BYTES), DropReason.TRUNCATED)
    fail(tunnel & (vxlan[:, 0] & VXLAN_FLAG_I == 0), DropReason.VXLAN_FLAGS)
    decap = tunnel & (drop < 0)

    inner_off = np.where(decap, l2o + 36, 0)
    inner_len = length - inner_off
    inner = outer
    if decap.any():
        inner = outer.copy()
        inner[decap] = _window(data[decap], inner_off[decap], _WINDOW)
    itype = _be(inner[:, 12:14])
    tagged = itype == ETHERTYPE_VLAN
    fail(tagged & (inner_len < 18), DropReason.TRUNCATED)
    tci = np.where(tagged, _be(inner[:, 14:16]), 0)
    dl_type = np.where(tagged, _be(inner[:, 16:18]), itype)
    l2 = np.where(tagged, 18, 14)
    ipi = _where(tagged, inner[:, 18:38], inner[:, 14:34])
    ihl = (ipi[:, 0] & 15).astype(np.int64)
    has_ip = ((dl_type == ETHERTYPE_IPV4) & (inner_len >= l2 + 20) & (ipi[:, 0] >> 4 == 4)
              & (ihl >= 5) & (inner_len >= l2 + 4 * ihl))
    nw_proto = ipi[:, 9]
    l4 = _window(inner, l2 + 4 * ihl, 4)
    has_l4 = (has_ip & ((nw_proto == IPPROTO_TCP) | (nw_proto == IPPROTO_UDP))
              & (_be(ipi[:, 6:8]) & IPV4_FRAG_OFFSET == 0) & (inner_len >= l2 + 4 * ihl + 4))
    return Parsed(
        drop=drop, decap=decap, inner_off=inner_off, inner_len=inner_len,
        tun_id=np.where(decap, _be(vxlan[:, 4:7]), 0), tun_src=np.where(decap, _be(ip[:, 12:16]), 0),
        in_port=batch.port.astype(np.uint64), dl_dst=_be(inner[:, 0:6]), dl_src=_be(inner[:, 6:12]),
        tagged=tagged, tci=tci, dl_vlan=np.where(tagged, tci & 0xFFF, NO_VLAN), dl_type=dl_type,
        has_ip=has_ip, nw_src=np.where(has_ip, _be(ipi[:, 12:16]), 0),
        nw_dst=np.where(has_ip, _be(ipi[:, 16:20]), 0), nw_proto=np.where(has_ip, nw_proto, 0),
        has_l4=has_l4, tp_src=np.where(has_l4, _be(l4[:, 0:2]), 0),
        tp_dst=np.where(has_l4, _be(l4[:, 2:4]), 0),
    )


_HASH_MUL = np.uint64(0x100000001B3)


def _key_hash(values):
    """Mix a list of (N,) uint64 field values into one (N,) uint64 key."""
    h = np.full(len(values[0]), 0xCBF29CE484222325, np.uint64)
    for v in values:
        h = (h ^ v) * _HASH_MUL
        h ^= h >> np.uint64(29)
    return h


class _Subtable:
    """All rules matching on one set of (field, mask): one exact-match hash lookup."""

    def __init__(self, profile, rules):
        self.fields = [f for f, _ in profile]
        self.masks = [np.uint64(m) for _, m in profile]
        self.values = [np.array([dict((f, v) for f, v, _ in r.match)[f] for _, r in rules],
                                np.uint64) for f in self.fields]
        self.rule_index = np.array([i for i, _ in rules], np.int64)
        if self.fields:
            keys = _key_hash(self.values)
        else:
            keys = np.zeros(len(rules), np.uint64)
        order = np.argsort(keys, kind="stable")
        self.keys, self.rule_index = keys[order], self.rule_index[order]
        self.values = [v[order] for v in self.values]

    def lookup(self, parsed):
        """Per frame: the rule index that matches in this subtable, or -1."""
        n = len(parsed.drop)
        if not self.fields:
            return np.full(n, self.rule_index[0], np.int64)
        values, valid = [], np.ones(n, bool)
        for field, mask in zip(self.fields, self.masks):
            value, has = parsed.field(field)
            values.append(value & mask)
            valid &= has
        keys = _key_hash(values)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        hit = valid & (self.keys[pos] == keys)
        for value, rule_value in zip(values, self.values):
            hit &= value == rule_value[pos]
        return np.where(hit, self.rule_index[pos], -1)


class _Classifier:
    """OpenFlow priority classification over a RuleSet: the best-ranked matching rule."""

    def __init__(self, ruleset):
        rules = list(ruleset)
        order = sorted(range(len(rules)), key=lambda i: (-rules[i].priority, rules[i].line))
        self.rank = np.empty(len(rules), np.int64)
        self.rank[order] = np.arange(len(rules))
        profiles = {}
        for i in order:  # best first, so the first rule seen for a key is the one that wins
            rule = rules[i]
            profiles.setdefault(tuple((f, m) for f, _, m in rule.match), []).append((i, rule))
        self.subtables = []
        for profile, members in profiles.items():
            # Rules with identical keys: only the best can ever match. Distinct keys whose
            # 64-bit hashes collide go to another subtable of the same profile.
            while members:
                table, keys, rest = [], {}, []
                for i, rule in members:
                    key = tuple(v for _, v, _ in rule.match)
                    hashed = int(_key_hash([np.array([v], np.uint64) for v in key])[0]) \
                        if key else 0
                    if hashed not in keys:
                        keys[hashed] = key
                        table.append((i, rule))
                    elif keys[hashed] != key:
                        rest.append((i, rule))
                self.subtables.append(_Subtable(profile, table))
                members = rest

    def classify(self, parsed):
        n = len(parsed.drop)
        best = np.full(n, -1, np.int64)
        best_rank = np.full(n, np.iinfo(np.int64).max, np.int64)
        for table in self.subtables:
            hit = table.lookup(parsed)
            rank = np.where(hit >= 0, self.rank[np.maximum(hit, 0)], np.iinfo(np.int64).max)
            better = rank < best_rank
            best = np.where(better, hit, best)
            best_rank = np.where(better, rank, best_rank)
        return best


class _Emissions:
    """Rules' emissions as per-slot parameter columns, indexed by rule."""

    def __init__(self, ruleset):
        rules = list(ruleset)
        self.count = np.array([len(r.emissions) for r in rules], np.int64)
        self.slots = []
        for j in range(int(self.count.max(initial=0))):
            cols = {k: np.zeros(len(rules), np.int64) for k in
                    ("port", "vlan_op", "vid", "set_src", "set_dst", "encap", "set_vni")}
            cols.update({k: np.zeros(len(rules), np.uint64) for k in
                         ("dl_src", "dl_dst", "tun_dst", "vni")})
            for i, rule in enumerate(rules):
                if j >= len(rule.emissions):
                    continue
                e = rule.emissions[j]
                cols["port"][i] = IN_PORT_CODE if e.port is None else int(e.port)
                cols["vlan_op"][i], cols["vid"][i] = int(e.vlan_op), e.vid
                cols["set_src"][i], cols["dl_src"][i] = e.dl_src is not None, e.dl_src or 0
                cols["set_dst"][i], cols["dl_dst"][i] = e.dl_dst is not None, e.dl_dst or 0
                cols["encap"][i], cols["tun_dst"][i] = e.tun_dst is not None, e.tun_dst or 0
                cols["set_vni"][i], cols["vni"][i] = e.vni is not None, e.vni or 0
            self.slots.append(cols)


@dataclasses.dataclass
class Result:
    """What the VTEP did with a batch: ``outputs`` per port (FrameBatch, in emission order,
    each frame with its input's timestamp), ``stats`` (the stats.json dictionary) and per input
    frame the matched rule index (``rule``, -1 for none) and drop reason (``drop``, -1)."""
    outputs: dict
    stats: dict
    rule: np.ndarray
    drop: np.ndarray


class Reference:
    """The reference VTEP for one configuration and rule set."""

    def __init__(self, config, ruleset):
        self.config = config
        self.ruleset = ruleset
        self.rules = list(ruleset)
        self._classifier = _Classifier(ruleset)
        self._emissions = _Emissions(ruleset)
        # The encapsulation header's constant bytes; per-frame fields are filled in later.
        cfg = config
        self._encap_template = np.frombuffer(
            cfg.gateway_mac.to_bytes(6, "big") + cfg.local_mac.to_bytes(6, "big")
            + ETHERTYPE_IPV4.to_bytes(2, "big")
            + bytes([0x45, 0, 0, 0, 0, 0, IPV4_DF >> 8, IPV4_DF & 0xFF, cfg.ttl, IPPROTO_UDP,
                     0, 0]) + cfg.local_ip.to_bytes(4, "big") + bytes(4)
            + bytes(2) + cfg.udp_port.to_bytes(2, "big") + bytes(4)
            + bytes([VXLAN_FLAG_I, 0, 0, 0, 0, 0, 0, 0]), np.uint8)

    def run(self, frames):
        """Process a FrameBatch (or a list of ``(port, bytes)``) in order."""
        if not isinstance(frames, FrameBatch):
            frames = FrameBatch.from_frames(frames)
        n_rules = len(self.rules)
        rule_packets = np.zeros(n_rules, np.int64)
        rule_bytes = np.zeros(n_rules, np.int64)
        rx = np.zeros((len(Port), 2), np.int64)
        tx = np.zeros((len(Port), 2), np.int64)
        drops = np.zeros(len(DropReason), np.int64)
        pieces = {port: [] for port in Port}
        rules_out, drops_out = [], []
        step = max(1024, CHUNK_BYTES // max(frames.data.shape[1], 1))
        for start in range(0, max(len(frames), 1), step):
            chunk = frames.take(slice(start, start + step))
            if not len(chunk):
                break
            parsed = parse(chunk, self.config)
            rule = self._classifier.classify(parsed) if n_rules else \
                np.full(len(chunk), -1, np.int64)
            ok = parsed.drop < 0
            rule = np.where(ok, rule, -1)
            drop = parsed.drop.copy()
            drop[ok & (rule < 0)] = DropReason.TABLE_MISS
            matched = rule >= 0
            emits = np.where(matched, self._emissions.count[np.maximum(rule, 0)], 0) \
                if n_rules else np.zeros(len(chunk), np.int64)  # no rules: all table misses
            drop[matched & (emits == 0)] = DropReason.ACTION_DROP
            rule_packets += np.bincount(rule[matched], minlength=n_rules)
            rule_bytes += np.bincount(rule[matched], weights=parsed.inner_len[matched],
                                      minlength=n_rules).astype(np.int64)
            for port in Port:
                here = chunk.port == port
                rx[port] += (here.sum(), chunk.length[here].sum())
            drops += np.bincount(drop[drop >= 0], minlength=len(DropReason))
            for j, slot in enumerate(self._emissions.slots):
                index = np.flatnonzero(emits > j)
                if len(index):
                    self._emit(chunk, parsed, rule, index, slot, start, j, pieces)
            rules_out.append(rule)
            drops_out.append(drop)
        outputs = {}
        for port in Port:
            keys = [k for k, _ in pieces[port]]
            batch = FrameBatch.concat([b for _, b in pieces[port]])
            keys = np.concatenate(keys) if keys else keys
            if len(keys) > 1 and np.any(keys[1:] < keys[:-1]):
                batch = batch.take(np.argsort(keys, kind="stable"))
            tx[port] += (len(batch), batch.length.sum())
            outputs[port] = batch
        stats = {
            "rules": [{"line": r.line, "rule": r.text, "n_packets": int(p), "n_bytes": int(b)}
                      for r, p, b in zip(self.rules, rule_packets, rule_bytes)],
            "ports": {port.label: {"rx_packets": int(rx[port, 0]), "rx_bytes": int(rx[port, 1]),
                                   "tx_packets": int(tx[port, 0]), "tx_bytes": int(tx[port, 1])}
                      for port in Port},
            "drops": {reason.label: int(drops[reason]) for reason in DropReason},
        }
        def cat(xs):
            return np.concatenate(xs) if xs else np.zeros(0, np.int64)

        return Result(outputs, stats, cat(rules_out), cat(drops_out))

    def _emit(self, chunk, parsed, rule, index, slot, base, j, pieces):
        """Emission slot ``j`` for the frames at ``index``: edit and file them per port."""
        r = rule[index]
        p = {k: v[r] for k, v in slot.items()}
        port = np.where(p["port"] == IN_PORT_CODE, chunk.port[index], p["port"])
        order_key = (base + index) * len(self._emissions.slots) + j
        to_ctl = port == Port.CONTROLLER
        if to_ctl.any():
            pieces[Port.CONTROLLER].append((order_key[to_ctl], chunk.take(index[to_ctl])))
        if to_ctl.all():
            return
        if to_ctl.any():
            keep = ~to_ctl
            index, port, order_key = index[keep], port[keep], order_key[keep]
            p = {k: v[keep] for k, v in p.items()}
        encap = (p["encap"] != 0) & (port == Port.NET)
        tagged_in = parsed.tagged[index]
        tci_in = parsed.tci[index].astype(np.int64)
        op = p["vlan_op"]
        tagged_out = np.where(op == VlanOp.KEEP, tagged_in, op != VlanOp.STRIP)
        tci_out = np.select([op == VlanOp.KEEP, op == VlanOp.SET_VID],
                            [tci_in, np.where(tagged_in, tci_in & 0xF000, 0) | p["vid"]],
                            p["vid"])
        off = parsed.inner_off[index]
        inner_len = parsed.inner_len[index] + 4 * (tagged_out.astype(np.int64)
                                                   - tagged_in.astype(np.int64))
        dl_dst = np.where(p["set_dst"] != 0, p["dl_dst"], parsed.dl_dst[index])
        dl_src = np.where(p["set_src"] != 0, p["dl_src"], parsed.dl_src[index])
        vni = np.where(p["set_vni"] != 0, p["vni"], parsed.tun_id[index])
        # Frames that share an offset, tag change and encap are edited with plain slices.
        classes = (off * 8 + tagged_in * 4 + tagged_out * 2 + encap).astype(np.int64)
        kinds = np.flatnonzero(np.bincount(classes))
        for cls in kinds:
            sel = slice(None) if len(kinds) == 1 else np.flatnonzero(classes == cls)
            o, t_in, t_out, enc = (int(cls) >> 3, bool(cls & 4), bool(cls & 2), bool(cls & 1))
            rows = index[sel]
            body = np.take(chunk.data, rows, axis=0)[:, o + 12 + 4 * t_in:]
            head = ENCAP_BYTES if enc else 0
            out = np.empty((len(rows), head + 12 + 4 * t_out + body.shape[1]), np.uint8)
            if enc:
                out[:, :head] = self._encap_header(
                    parsed, index[sel], dl_dst[sel], dl_src[sel], inner_len[sel],
                    p["tun_dst"][sel], vni[sel])
            out[:, head:head + 6] = _to_bytes(dl_dst[sel], 6)
            out[:, head + 6:head + 12] = _to_bytes(dl_src[sel], 6)
            if t_out:
                out[:, head + 12:head + 14] = (0x81, 0x00)
                out[:, head + 14:head + 16] = _to_bytes(tci_out[sel], 2)
            out[:, head + 16 if t_out else head + 12:] = body
            out_len, out_port, key = inner_len[sel] + head, port[sel], order_key[sel]
            for port_value in np.flatnonzero(np.bincount(out_port)):
                here = out_port == port_value
                if here.all():
                    batch = FrameBatch(out, out_len, out_port.astype(np.uint8),
                                       chunk.time_ns[rows])
                    pieces[Port(int(port_value))].append((key, batch))
                else:
                    batch = FrameBatch(out[here], out_len[here], out_port[here].astype(np.uint8),
                                       chunk.time_ns[rows[here]])
                    pieces[Port(int(port_value))].append((key[here], batch))

    def _encap_header(self, parsed, index, dl_dst, dl_src, inner_len, tun_dst, vni):
        """The 50-byte VXLAN/UDP/IPv4/Ethernet header of each frame (RFC 7348 §5)."""
        h = np.broadcast_to(self._encap_template, (len(index), ENCAP_BYTES)).copy()
        h[:, 16:18] = _to_bytes(36 + inner_len, 2)
        h[:, 30:34] = _to_bytes(tun_dst, 4)
        h[:, 24:26] = _to_bytes(ipv4_checksum(h[:, 14:34]), 2)
        h[:, 34:36] = _to_bytes(tunnel_src_port(
            dl_dst, dl_src, parsed.dl_type[index], parsed.nw_src[index], parsed.nw_dst[index],
            parsed.nw_proto[index], parsed.tp_src[index], parsed.tp_dst[index]), 2)
        h[:, 38:40] = _to_bytes(16 + inner_len, 2)
        h[:, 46:49] = _to_bytes(vni, 3)
        return h

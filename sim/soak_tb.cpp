// Verilator testbench for openvtep.hdl.pipeline.Pipeline: the simulation half of the soak
// (openvtep.sim.soak), which builds it and drives it.
//
// One process simulates one pipeline for a whole soak: the Python side sends commands on
// stdin, one a line, and reads one answer line per command on stdout ("ok ..." or
// "error ..."). Files are little-endian binaries:
//
//   bus IN OUT
//       IN: records (u32 op: 0 read, 1 write; u32 addr; u32 word), issued one at a time as
//       the bus protocol asks (openvtep.hdl.bus). OUT: one u32 per read. Answer:
//       "ok bus CYCLES", or "error bus ..." on an r_err response or a request never answered.
//   run IN OUT SEED IDLE IDLE_BURST STALL STALL_BURST LIMIT
//       IN: u32 n; u32 length[n]; u8 port[n]; the frames' bytes, concatenated. The frames go
//       into `i` one beat a cycle, with input gaps; `o` is stalled at random (IDLE and STALL:
//       fractions of cycles, in parts per million; *_BURST: mean run length in cycles of a
//       gap or stall, 1 for independent cycles). The run ends when every frame has its
//       verdict (`done`) and every output its frame promised (emits + punt) has left, then 64
//       more cycles with `o` ready must bring nothing. OUT: u32 n; per verdict (u32 rule; u8
//       hit, emits, punt, reason); u32 m; u32 length[m]; u8 port[m]; the output bytes.
//       Answer: "ok run CYCLES VERDICTS OUTPUTS"; "error stuck ..." past LIMIT cycles (OUT is
//       written anyway) or "error stream ..." when `o` breaks the stream rules.
//   quit
//
// Layout constants (bit offsets in the payloads and in `done`) come from the Python side as
// -D definitions, taken from the Amaranth layouts; see openvtep.sim.soak.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "verilated.h"
#include VTOP_HEADER

#ifndef W
#error "define W, DATA_OFF, KEEP_OFF, LAST_OFF, PORT_OFF and the DONE_* offsets"
#endif

#define SIG(port, member) port##___05F##member

namespace {

constexpr int PAYLOAD_WORDS = (PAYLOAD_BITS + 31) / 32;

// A payload as 32-bit words, LSB first; stored into and loaded from Verilator's signal types.
struct Bits {
    uint32_t w[PAYLOAD_WORDS + 1] = {};
    void set(int off, int width, uint64_t value) {
        for (int k = 0; k < width; k++)
            if ((value >> k) & 1) w[(off + k) / 32] |= 1u << ((off + k) % 32);
    }
    uint64_t get(int off, int width) const {
        uint64_t v = 0;
        for (int k = 0; k < width; k++)
            v |= uint64_t((w[(off + k) / 32] >> ((off + k) % 32)) & 1) << k;
        return v;
    }
    bool operator==(const Bits &o) const { return !memcmp(w, o.w, sizeof w); }
};

template <std::size_t N> void store(VlWide<N> &sig, const Bits &b) {
    for (std::size_t k = 0; k < N; k++) sig[k] = b.w[k];
}
inline void store(QData &sig, const Bits &b) { sig = b.w[0] | uint64_t(b.w[1]) << 32; }
inline void store(IData &sig, const Bits &b) { sig = b.w[0]; }
template <std::size_t N> void load(const VlWide<N> &sig, Bits &b) {
    for (std::size_t k = 0; k < N; k++) b.w[k] = sig[k];
}
inline void load(const QData &sig, Bits &b) { b.w[0] = uint32_t(sig); b.w[1] = sig >> 32; }
inline void load(const IData &sig, Bits &b) { b.w[0] = sig; }

// splitmix64: a seeded stream of uniform numbers, the same on every platform.
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    bool chance(uint64_t ppm) { return ppm && next() % 1000000 < ppm; }
};

// On/off runs: "off" a fraction FRACTION (ppm) of cycles, in runs of mean length BURST.
struct Bursts {
    uint64_t enter_ppm = 0, leave_ppm = 1000000;
    bool off = false;
    Bursts() = default;
    Bursts(uint64_t fraction, uint64_t burst) {
        if (!fraction) return;
        if (fraction >= 1000000) fraction = 999999;
        if (burst < 1) burst = 1;
        leave_ppm = 1000000 / burst;
        // Stationary fraction off = enter / (enter + leave).
        enter_ppm = uint64_t(double(fraction) * leave_ppm / (1000000.0 - fraction));
        if (enter_ppm > 1000000) enter_ppm = 1000000;
    }
    bool step(Rng &rng) {
        off = off ? !rng.chance(leave_ppm) : rng.chance(enter_ppm);
        return off;
    }
};

struct Tb {
    std::unique_ptr<VerilatedContext> ctx{new VerilatedContext};
    std::unique_ptr<VTOP> top{new VTOP{ctx.get()}};
    uint64_t cycle = 0;

    Tb() {
        top->clk = 0;
        top->rst = 1;
        top->SIG(i, valid) = 0;
        top->SIG(o, ready) = 0;
        top->SIG(bus, valid) = 0;
        for (int k = 0; k < 4; k++) tick();
        top->rst = 0;
    }
    // One clock cycle: the inputs as set are settled (outputs may depend on them), the
    // caller has sampled what it needs through settle(), then the rising edge.
    void settle() { top->clk = 0; top->eval(); }
    void tick() {
        top->clk = 0;
        top->eval();
        top->clk = 1;
        top->eval();
        cycle++;
    }
    void edge() { top->clk = 1; top->eval(); cycle++; }

    // One bus request; false when it was not accepted or answered in time.
    bool request(bool write, uint32_t addr, uint32_t word, uint32_t &data, bool &err) {
        top->SIG(bus, addr) = addr;
        top->SIG(bus, w_en) = write;
        top->SIG(bus, w_data) = word;
        top->SIG(bus, valid) = 1;
        for (int n = 0;; n++) {
            if (n > 100000) return false;
            settle();
            bool taken = top->SIG(bus, ready);
            edge();
            if (taken) break;
        }
        top->SIG(bus, valid) = 0;
        for (int n = 0;; n++) {
            if (n > 100000) return false;
            settle();
            bool answered = top->SIG(bus, r_valid);
            data = top->SIG(bus, r_data);
            err = top->SIG(bus, r_err);
            edge();
            if (answered) return true;
        }
    }
};

std::vector<uint8_t> read_file(const std::string &path) {
    std::vector<uint8_t> out;
    FILE *f = fopen(path.c_str(), "rb");
    if (!f) return out;
    uint8_t buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
    fclose(f);
    return out;
}

bool write_file(const std::string &path, const std::vector<uint8_t> &data) {
    FILE *f = fopen(path.c_str(), "wb");
    if (!f) return false;
    bool ok = fwrite(data.data(), 1, data.size(), f) == data.size();
    return fclose(f) == 0 && ok;
}

template <typename T> void put(std::vector<uint8_t> &out, T value) {
    uint8_t bytes[sizeof(T)];
    memcpy(bytes, &value, sizeof(T));  // little-endian hosts only (x86, arm64)
    out.insert(out.end(), bytes, bytes + sizeof(T));
}

std::string cmd_bus(Tb &tb, const std::string &in, const std::string &out) {
    std::vector<uint8_t> ops = read_file(in);
    std::vector<uint8_t> result;
    uint64_t start = tb.cycle;
    for (size_t k = 0; k + 12 <= ops.size(); k += 12) {
        uint32_t op, addr, word, data = 0;
        memcpy(&op, &ops[k], 4);
        memcpy(&addr, &ops[k + 4], 4);
        memcpy(&word, &ops[k + 8], 4);
        bool err = false;
        if (!tb.request(op == 1, addr, word, data, err)) {
            std::ostringstream s;
            s << "error bus request " << k / 12 << " at 0x" << std::hex << addr
              << " not answered";
            return s.str();
        }
        if (err) {
            std::ostringstream s;
            s << "error bus " << (op == 1 ? "write" : "read") << " at 0x" << std::hex << addr
              << ": r_err";
            return s.str();
        }
        if (op != 1) put<uint32_t>(result, data);
    }
    if (!write_file(out, result)) return "error cannot write " + out;
    return "ok bus " + std::to_string(tb.cycle - start);
}

struct Verdict {
    uint32_t rule;
    uint8_t hit, emits, punt, reason;
};

std::string cmd_run(Tb &tb, const std::string &in, const std::string &out, uint64_t seed,
                    uint64_t idle, uint64_t idle_burst, uint64_t stall, uint64_t stall_burst,
                    uint64_t limit) {
    std::vector<uint8_t> file = read_file(in);
    if (file.size() < 4) return "error cannot read " + in;
    uint32_t n;
    memcpy(&n, file.data(), 4);
    std::vector<uint32_t> length(n);
    memcpy(length.data(), file.data() + 4, 4 * size_t(n));
    const uint8_t *port = file.data() + 4 + 4 * size_t(n);
    const uint8_t *bytes = port + n;
    uint64_t total = 0;
    for (uint32_t f = 0; f < n; f++) total += length[f];
    if (file.size() != 4 + 5 * size_t(n) + total) return "error bad frame file " + in;

    auto &top = tb.top;
    Rng rng{seed};
    Bursts gaps(idle, idle_burst), stalls(stall, stall_burst);
    std::vector<Verdict> verdicts;
    verdicts.reserve(n);
    std::vector<uint32_t> out_length;
    std::vector<uint8_t> out_port, out_bytes;
    out_bytes.reserve(total + total / 2);
    uint64_t promised = 0;  // outputs the verdicts so far announce

    uint32_t frame = 0;      // input frame being sent
    uint32_t offset = 0;     // its next byte
    uint64_t frame_base = 0; // its first byte in `bytes`
    bool offering = false;   // a beat on `i`, not yet transferred
    Bits beat;

    bool stalled = false;    // `o` offered a beat last cycle that was not taken
    Bits stalled_beat;
    uint32_t cur_length = 0; // bytes of the output frame being received
    int cur_port = -1;
    std::string error;

    uint64_t start = tb.cycle, drained_at = 0;
    bool drained = false;
    while (true) {
        if (!drained && frame == n && !offering && verdicts.size() == n &&
            out_length.size() == promised && cur_port < 0) {
            drained = true;
            drained_at = tb.cycle;
        }
        if (drained && tb.cycle - drained_at >= 64) break;
        if (tb.cycle - start > limit) {
            std::ostringstream s;
            s << "error stuck after " << tb.cycle - start << " cycles: " << frame << " of " << n
              << " frames sent, " << verdicts.size() << " decided, " << out_length.size()
              << " of " << promised << " outputs";
            error = s.str();
            break;
        }
        // Input: offer the next beat unless in a gap.
        if (!offering && frame < n && !gaps.step(rng)) {
            uint32_t len = length[frame];
            uint32_t take = len - offset < W ? len - offset : W;
            beat = Bits{};
            for (uint32_t k = 0; k < take; k++)
                beat.set(DATA_OFF + 8 * k, 8, bytes[frame_base + offset + k]);
            beat.set(KEEP_OFF, W, (uint64_t(1) << take) - 1);
            beat.set(LAST_OFF, 1, offset + take == len);
            beat.set(PORT_OFF, 2, port[frame]);
            store(top->SIG(i, payload), beat);
            offering = true;
        }
        top->SIG(i, valid) = offering;
        bool ready_o = drained || !stalls.step(rng);
        top->SIG(o, ready) = ready_o;
        tb.settle();

        bool in_taken = offering && top->SIG(i, ready);
        uint32_t done = top->done;
        bool o_valid = top->SIG(o, valid);
        Bits o_beat;
        if (o_valid) load(top->SIG(o, payload), o_beat);
        tb.edge();

        if (in_taken) {
            offering = false;
            uint32_t len = length[frame];
            offset += len - offset < W ? len - offset : W;
            if (offset == len) {
                frame_base += len;
                frame++;
                offset = 0;
            }
        }
        if ((done >> DONE_VALID_OFF) & 1) {
            Verdict v;
            v.hit = (done >> DONE_HIT_OFF) & 1;
            v.rule = (done >> DONE_RULE_OFF) & ((1u << DONE_RULE_BITS) - 1);
            v.emits = (done >> DONE_EMITS_OFF) & 1;
            v.punt = (done >> DONE_PUNT_OFF) & 1;
            v.reason = (done >> DONE_REASON_OFF) & ((1u << DONE_REASON_BITS) - 1);
            promised += v.emits + v.punt;
            verdicts.push_back(v);
        }
        if (stalled && !(o_valid && o_beat == stalled_beat)) {
            std::ostringstream s;
            s << "error stream: o " << (o_valid ? "payload changed" : "valid dropped")
              << " while stalled, output " << out_length.size() << ", cycle " << tb.cycle;
            error = s.str();
            break;
        }
        if (o_valid) {
            uint64_t keep = o_beat.get(KEEP_OFF, W);
            bool last = o_beat.get(LAST_OFF, 1);
            int p = int(o_beat.get(PORT_OFF, 2));
            bool bad_keep = !keep || (keep & (keep + 1)) ||
                            (!last && keep != (uint64_t(1) << W) - 1);
            if (bad_keep || (cur_port >= 0 && p != cur_port) || drained) {
                std::ostringstream s;
                s << "error stream: o "
                  << (drained ? "offers a beat nobody announced"
                      : bad_keep ? "bad keep" : "port changed inside a frame")
                  << ", output " << out_length.size() << ", cycle " << tb.cycle;
                error = s.str();
                break;
            }
            if (ready_o) {
                stalled = false;
                if (cur_port < 0) cur_port = p;
                int count = 0;
                while (count < W && ((keep >> count) & 1)) count++;
                for (int k = 0; k < count; k++)
                    out_bytes.push_back(uint8_t(o_beat.get(DATA_OFF + 8 * k, 8)));
                cur_length += count;
                if (last) {
                    out_length.push_back(cur_length);
                    out_port.push_back(uint8_t(cur_port));
                    cur_length = 0;
                    cur_port = -1;
                }
            } else {
                stalled = true;
                stalled_beat = o_beat;
            }
        }
    }
    top->SIG(i, valid) = 0;
    top->SIG(o, ready) = 0;

    std::vector<uint8_t> result;
    result.reserve(16 + 8 * verdicts.size() + 5 * out_length.size() + out_bytes.size());
    put<uint32_t>(result, uint32_t(verdicts.size()));
    for (const Verdict &v : verdicts) {
        put<uint32_t>(result, v.rule);
        result.push_back(v.hit);
        result.push_back(v.emits);
        result.push_back(v.punt);
        result.push_back(v.reason);
    }
    put<uint32_t>(result, uint32_t(out_length.size()));
    for (uint32_t len : out_length) put<uint32_t>(result, len);
    result.insert(result.end(), out_port.begin(), out_port.end());
    result.insert(result.end(), out_bytes.begin(), out_bytes.end());
    if (!write_file(out, result)) return "error cannot write " + out;
    if (!error.empty()) return error;
    return "ok run " + std::to_string(tb.cycle - start) + " " +
           std::to_string(verdicts.size()) + " " + std::to_string(out_length.size());
}

}  // namespace

int main(int argc, char **argv) {
    Verilated::commandArgs(argc, argv);
    Tb tb;
    std::string line;
    char buf[4096];
    while (fgets(buf, sizeof buf, stdin)) {
        std::istringstream words(buf);
        std::string cmd, in, out;
        words >> cmd;
        std::string answer;
        if (cmd == "bus") {
            words >> in >> out;
            answer = cmd_bus(tb, in, out);
        } else if (cmd == "run") {
            uint64_t seed, idle, idle_burst, stall, stall_burst, limit;
            words >> in >> out >> seed >> idle >> idle_burst >> stall >> stall_burst >> limit;
            if (!words)
                answer = "error run: expected IN OUT SEED IDLE IDLE_BURST STALL STALL_BURST LIMIT";
            else
                answer = cmd_run(tb, in, out, seed, idle, idle_burst, stall, stall_burst, limit);
        } else if (cmd == "quit") {
            break;
        } else {
            answer = "error unknown command " + cmd;
        }
        printf("%s cycle %llu\n", answer.c_str(), (unsigned long long)tb.cycle);
        fflush(stdout);
    }
    tb.top->final();
    return 0;
}

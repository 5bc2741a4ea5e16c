#!/usr/bin/env bash
# User-initiated WhatsApp calls under load: waswitch sim (WhatsApp users with real WebRTC
# media, user-initiated calls at a rate, each held for a time) -> waswitch -> a SIPp PBX
# answering with RTP echo, all on 127.0.0.1. Prints offered/connected/failed, audio verified,
# setup latency p50/p99 (the user's offer to media connected), the switch's CPU seconds per
# call and resident memory per concurrent call, and writes a PNG plot of concurrent calls and
# the switch's CPU over time.
#
#   loadtest/uic.sh [RATE] [HOLD_S] [DURATION_S] [CONCURRENCY]     default: 20 10 60 2000
#   UIC_PBX=opus loadtest/uic.sh ...      the PBX answers Opus: no transcoding in the switch
#
# Needs a release build (cargo build --release; the script builds it if missing) and SIPp
# (Debian package sip-tester). Ports: HTTP 18080, sim 18090, SIP 15060, PBX 15070, media
# 30000-39999. The run is bounded: new calls stop after DURATION_S, every call after its hold.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RATE="${1:-20}"; HOLD="${2:-10}"; DURATION="${3:-60}"; CONCURRENCY="${4:-2000}"
BIN="$ROOT/target/release/waswitch"
W="$(mktemp -d /tmp/uic-load.XXXXXX)"
command -v sipp >/dev/null || { echo "missing sipp (apt-get install sip-tester)"; exit 2; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --bin waswitch) || exit 2

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

sed -e 's/127.0.0.1:8080/127.0.0.1:18080/' -e 's/127.0.0.1:8090/127.0.0.1:18090/' \
    -e 's/127.0.0.1:5060/127.0.0.1:15060/' -e 's/127.0.0.1:5070/127.0.0.1:15070/' \
    -e "s|sqlite://waswitch-uic-sim.db|sqlite://$W/uic.db|" \
    -e 's/^\[media\]/[media]\nport_min = 30000\nport_max = 39999/' \
    "$ROOT/config/examples/uic-sim.toml" >"$W/uic.toml"
sed -i 's/^\[limits\]//' "$W/uic.toml"
# SIPp's built-in callee cannot answer OPTIONS (it aborts them as unexpected), so the trunk
# is not probed: a probe timing out would mark it down and refuse every later call.
sed -i 's/^invite_timeout_ms = 4000$/invite_timeout_ms = 4000\noptions_interval_secs = 0/' "$W/uic.toml"
printf "\n[limits]\nmax_calls = 20000\nmax_cps = 5000\n" >>"$W/uic.toml"

# The PBX: SIPp's built-in callee (answers PCMU: the switch transcodes Opus <-> PCMU), or
# with UIC_PBX=opus a callee answering Opus (passed through), echoing RTP, bounded in time.
if [ "${UIC_PBX:-pcmu}" = opus ]; then
  SCENARIO=(-sf "$ROOT/loadtest/sipp/uic_uas_opus.xml")
else
  SCENARIO=(-sn uas)
fi
timeout $((DURATION + HOLD + 120)) sipp "${SCENARIO[@]}" -i 127.0.0.1 -p 15070 -mi 127.0.0.1 \
  -mp 40000 -rtp_echo -nostdin -bg -trace_err -error_file "$W/sipp.err" >"$W/sipp.log" 2>&1
SIPP=$(pgrep -n -f "sipp .*-p 15070") && PIDS+=("$SIPP")

WASWITCH_LOG_LEVEL=warn "$BIN" run --config "$W/uic.toml" >"$W/switch.log" 2>&1 &
SW=$!; PIDS+=("$SW")
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/ready >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:18080/ready >/dev/null || { echo "the switch did not start"; cat "$W/switch.log"; exit 2; }

# Once a second: concurrent calls (the switch's gauge), the switch's CPU ticks and RSS.
TICK=$(getconf CLK_TCK)
(
  while kill -0 "$SW" 2>/dev/null; do
    calls=$(curl -sf http://127.0.0.1:18080/metrics | sed -n 's/^waswitch_calls_active \([0-9.]*\)$/\1/p')
    read -r ut st < <(awk '{print $14, $15}' "/proc/$SW/stat")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$SW/status")
    echo "$(date +%s.%N) ${calls:-0} $((ut + st)) $rss"
    sleep 1
  done
) >"$W/samples.txt" &
PIDS+=($!)

echo "rate=$RATE/s hold=${HOLD}s duration=${DURATION}s concurrency<=$CONCURRENCY (results: $W)"
cpu0=$(awk '{print $14 + $15}' "/proc/$SW/stat")
timeout $((DURATION + HOLD + 90)) "$BIN" sim --config "$W/uic.toml" --rate "$RATE" \
  --hold "$HOLD" --duration "$DURATION" --concurrency "$CONCURRENCY" \
  >"$W/sim.json" 2>"$W/sim.log"
SIM_EXIT=$?
cpu1=$(awk '{print $14 + $15}' "/proc/$SW/stat")
sleep 1

python3 - "$W" "$cpu0" "$cpu1" "$TICK" "$SIM_EXIT" <<'PY'
import json, struct, sys, zlib
w, cpu0, cpu1, tick, sim_exit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
try:
    r = json.load(open(f"{w}/sim.json"))
except Exception as e:
    print(f"no report from the sim (exit {sim_exit}): {e}"); sys.exit(1)
samples = [list(map(float, l.split())) for l in open(f"{w}/samples.txt") if len(l.split()) == 4]
cpu_s = (cpu1 - cpu0) / tick
peak = max((s[1] for s in samples), default=0)
rss_peak = max((s[3] for s in samples), default=0)
rss_base = samples[0][3] if samples else 0
print(f"offered={r['attempts']} connected={r['connected']} accepted={r['accepted']} "
      f"failed={r['failed']} audio_verified={r['audio_verified']} errors={r['errors']}")
print(f"setup_p50_ms={r['setup_p50_ms']} setup_p99_ms={r['setup_p99_ms']} "
      f"peak_concurrent={peak:.0f} elapsed_s={r['elapsed_s']:.1f}")
print(f"switch_cpu_s={cpu_s:.1f} cpu_ms_per_call={1000 * cpu_s / max(r['attempts'], 1):.1f} "
      f"rss_peak_kib={rss_peak:.0f} rss_kib_per_concurrent_call={(rss_peak - rss_base) / max(peak, 1):.1f}")

# A PNG of concurrent calls (blue) and switch CPU % of one core (red) over time.
W_, H_ = 800, 300
img = [[(255, 255, 255)] * W_ for _ in range(H_)]
def line(points, colour, top):
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for k in range(n + 1):
            x = int(x0 + (x1 - x0) * k / n); y = int(y0 + (y1 - y0) * k / n)
            if 0 <= x < W_ and 0 <= y < H_:
                img[y][x] = colour
if len(samples) > 1:
    t0, t1 = samples[0][0], samples[-1][0]
    xs = lambda t: int(20 + (W_ - 40) * (t - t0) / max(t1 - t0, 1e-9))
    calls = [(xs(s[0]), int(H_ - 20 - (H_ - 40) * s[1] / max(peak, 1))) for s in samples]
    cpu = []
    for a, b in zip(samples, samples[1:]):
        pct = 100 * (b[2] - a[2]) / tick / max(b[0] - a[0], 1e-9)
        cpu.append((xs(b[0]), int(H_ - 20 - (H_ - 40) * min(pct, 200) / 200)))
    for x in range(20, W_ - 20):
        img[H_ - 20][x] = (0, 0, 0)
    line(calls, (30, 80, 200), peak)
    line(cpu, (200, 40, 40), 200)
raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in img)
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W_, H_, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
open(f"{w}/uic.png", "wb").write(png)
print(f"plot: {w}/uic.png (blue: concurrent calls, 0..{peak:.0f}; red: switch CPU, 0..200% of a core)")
PY

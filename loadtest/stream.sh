#!/usr/bin/env bash
# Voice bots under load: the latency the switch adds to media streams. waswitch sim places
# user-initiated WhatsApp calls (real WebRTC media, Opus) to a number whose IVR streams each
# call to the example bot (examples/stream_bot.rs, on loopback), which echoes every audio
# message back; each caller counts as verified when it hears its own 440 Hz tone back through
# the bot. With CONCURRENCY streams up at once the switch's histograms are read over the
# plateau (from the last call's start to a second before the first call's end):
# - to_bot: a customer's packet reaching the switch to its audio written to the bot;
# - to_caller: a frame of the bot's audio reaching the switch to its first packet toward the
#   customer, the playout prefill (PREFILL_MS) included; timed for frames that find the
#   buffer holding no more than the prefill and a frame (what the switch adds, not a queue
#   the bot built by sending in bursts).
# The switch runs on core 0, the sim and the bot on core 1 (taskset).
#
#   loadtest/stream.sh [CONCURRENCY] [HOLD_S] [FORMAT] [PREFILL_MS]   default: 100 20 twilio 40
#
# FORMAT is twilio (μ-law 8 kHz in JSON) or l16 (16 kHz PCM in binary messages).
# OPUS_COMPLEXITY (default 5, the switch's default) sets [media] opus_complexity: the Opus
# encoder toward the customer. SWITCH_CPUS and HARNESS_CPUS (default 0 and 1) pin them. The last
# line is one JSON object (format, streams, to_bot_p50_ms, to_bot_p99_ms, to_caller_p50_ms,
# to_caller_p99_ms, cpu_ms_per_stream_second, failed, ...).
#
# Needs release builds of the switch and the example (built if missing). Ports: HTTP 18080,
# sim 18090, SIP 15060, bot 18800, media 30000-39999. Bounded: every call ends after HOLD_S.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONCURRENCY="${1:-100}"; HOLD="${2:-20}"; FORMAT="${3:-twilio}"; PREFILL="${4:-40}"
BIN="${STREAM_BIN:-$ROOT/target/release/waswitch}"
BOT="$ROOT/target/release/examples/stream-bot"
W="$(mktemp -d /tmp/stream-load.XXXXXX)"
[ -x "$BIN" ] && [ -x "$BOT" ] || (cd "$ROOT" && cargo build --release --bin waswitch --example stream-bot) || exit 2
SWITCH_CPUS="${SWITCH_CPUS:-0}"; HARNESS_CPUS="${HARNESS_CPUS:-1}"
RAMP=$(( CONCURRENCY / 50 > 1 ? CONCURRENCY / 50 : 1 ))
[ "$HOLD" -gt $((RAMP + 3)) ] || { echo "HOLD_S must exceed the ramp ($RAMP s) by more than 3 s"; exit 2; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

sed -e 's/127.0.0.1:8080/127.0.0.1:18080/' -e 's/127.0.0.1:8090/127.0.0.1:18090/' \
    -e 's/127.0.0.1:5060/127.0.0.1:15060/' -e 's/127.0.0.1:5070/127.0.0.1:15070/' \
    -e 's|ws://127.0.0.1:8800/|ws://127.0.0.1:18800/|' \
    -e "s|^format = \"twilio\"|format = \"$FORMAT\"\nprefill_ms = $PREFILL|" \
    -e "s|sqlite://waswitch-stream-sim.db|sqlite://$W/stream.db|" \
    -e "s|^prompts = \"prompts\"|prompts = \"$ROOT/config/examples/prompts\"|" \
    -e "s/^\[media\]/[media]\nport_min = 30000\nport_max = 39999\nopus_complexity = ${OPUS_COMPLEXITY:-5}/" \
    "$ROOT/config/examples/stream-sim.toml" >"$W/stream.toml"
printf "\n[limits]\nmax_calls = 20000\nmax_cps = 5000\n" >>"$W/stream.toml"

STREAM_BOT_LISTEN=127.0.0.1:18800 taskset -c "$HARNESS_CPUS" "$BOT" >"$W/bot.log" 2>&1 &
PIDS+=($!)
WASWITCH_LOG_LEVEL=warn taskset -c "$SWITCH_CPUS" "$BIN" run --config "$W/stream.toml" >"$W/switch.log" 2>&1 &
SW=$!; PIDS+=("$SW")
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/ready >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:18080/ready >/dev/null || { echo "the switch did not start"; cat "$W/switch.log"; exit 2; }

scrape() { curl -sf http://127.0.0.1:18080/metrics >"$1"; }
TICK=$(getconf CLK_TCK)
echo "streams=$CONCURRENCY (over ${RAMP}s) hold=${HOLD}s format=$FORMAT prefill_ms=$PREFILL; switch on cpu $SWITCH_CPUS, sim and bot on cpu $HARNESS_CPUS (results: $W)"
# The plateau: from a second after the last call started to a second before the first ends.
# The harness core's busy and total ticks (is the harness the bottleneck?).
core() { awk -v c="cpu$HARNESS_CPUS" '$1 == c {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat; }
( sleep $((RAMP + 2)); scrape "$W/m0"; awk '{print $14 + $15}' "/proc/$SW/stat" >"$W/cpu0"; date +%s.%N >>"$W/cpu0"; core >"$W/h0"
  sleep $((HOLD - RAMP - 3)); scrape "$W/m1"; awk '{print $14 + $15}' "/proc/$SW/stat" >"$W/cpu1"; date +%s.%N >>"$W/cpu1"; core >"$W/h1" ) &
PIDS+=($!)
timeout $((HOLD + RAMP + 90)) taskset -c "$HARNESS_CPUS" "$BIN" sim --config "$W/stream.toml" \
  --rate $(( CONCURRENCY / RAMP )) --hold "$HOLD" --duration "$RAMP" --concurrency "$CONCURRENCY" \
  >"$W/sim.json" 2>"$W/sim.log"
sleep 2
scrape "$W/m2"

python3 - "$W" "$TICK" "$FORMAT" "$CONCURRENCY" "$PREFILL" "$ROOT" <<'PY'
import json, os, re, sys
w, tick, fmt, concurrency, prefill = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, os.path.join(sys.argv[6], "loadtest"))
from report import quantile

def buckets(path, name):
    out = {}
    for line in open(path).read().splitlines():
        m = re.match(r'([a-z_]+)\{([^}]*)\} ([0-9.eE+-]+)$', line)
        if not m or m.group(1) != name:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        le = labels.get("le")
        if le is None:
            continue
        out.setdefault(labels.get("direction", ""), []).append(
            (float("inf") if le == "+Inf" else float(le), float(m.group(3))))
    return {k: sorted(v) for k, v in out.items()}

def counter(path, name, **labels):
    total = 0.0
    for line in open(path).read().splitlines():
        m = re.match(r'([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$', line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total

name = "waswitch_stream_latency_seconds_bucket"
a, b = buckets(f"{w}/m0", name), buckets(f"{w}/m1", name)
result = {"format": fmt, "streams": concurrency, "prefill_ms": prefill}
try:
    r = json.load(open(f"{w}/sim.json"))
    print(f"offered={r['attempts']} connected={r['connected']} failed={r['failed']} "
          f"audio_verified={r['audio_verified']} errors={r['errors']} peak={r['peak_concurrency']}")
    result.update(offered=r["attempts"], failed=r["failed"], audio_verified=r["audio_verified"],
                  peak_concurrency=r["peak_concurrency"])
except Exception as e:
    print(f"no report from the sim: {e}")
for d in ("to_bot", "to_caller"):
    before = dict(a.get(d, []))
    cum = [(le, c - before.get(le, 0.0)) for le, c in b.get(d, [])]
    p50, p99 = quantile(cum, 0.5), quantile(cum, 0.99)
    n = cum[-1][1] if cum else 0
    fmt_ms = lambda v: "n/a" if v is None else f"{1000 * v:.3f}"
    print(f"{d}: samples={n:.0f} p50_ms={fmt_ms(p50)} p99_ms={fmt_ms(p99)}")
    result[f"{d}_p50_ms"] = None if p50 is None else round(1000 * p50, 3)
    result[f"{d}_p99_ms"] = None if p99 is None else round(1000 * p99, 3)
    result[f"{d}_samples"] = int(n)
c0, t0 = [float(x) for x in open(f"{w}/cpu0").read().split()]
c1, t1 = [float(x) for x in open(f"{w}/cpu1").read().split()]
streams = counter(f"{w}/m1", "waswitch_streams_active")
cpu_s = (c1 - c0) / tick
stream_s = streams * (t1 - t0)
result["cpu_ms_per_stream_second"] = round(1000 * cpu_s / max(stream_s, 1), 3)
print(f"switch: cpu_s={cpu_s:.2f} over {t1 - t0:.1f}s with {streams:.0f} streams up: "
      f"{result['cpu_ms_per_stream_second']} ms per stream-second on one core")
try:
    (b0, t0h), (b1, t1h) = [tuple(map(float, open(f"{w}/{h}").read().split())) for h in ("h0", "h1")]
    result["harness_core_busy_pct"] = round(100 * (b1 - b0) / max(t1h - t0h, 1), 1)
    print(f"harness core busy: {result['harness_core_busy_pct']} % (sim and bot)")
except Exception:
    pass
ends = {}
for line in open(f"{w}/m2").read().splitlines():
    m = re.match(r'waswitch_streams_total\{([^}]*)\} ([0-9.]+)$', line)
    if m and float(m.group(2)) > 0:
        ends[dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))["end"]] = int(float(m.group(2)))
dropped = counter(f"{w}/m2", "waswitch_stream_dropped_total")
print(f"streams ended: {ends}; bot messages dropped: {dropped:.0f}")
result["ends"] = ends
print(json.dumps(result))
PY

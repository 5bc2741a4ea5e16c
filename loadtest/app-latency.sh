#!/usr/bin/env bash
# HTTP voice apps under load: what the switch adds between an app's answer and its first
# verb acting. waswitch sim places user-initiated WhatsApp calls (real WebRTC media) at a rate
# to a number driven by the example app (examples/voice_app.rs, on loopback); the app answers
# each call.initiated with its menu (answer, gather with a prompt file). The switch measures,
# per call, the time from the app's verbs being ready (answer read and checked, prompts loaded)
# to the first of them carried out (waswitch_app_verbs_start_seconds, a summary with p50/p99),
# each caller counting as verified once it hears the menu (600 Hz),
# and the app's own time (waswitch_app_latency_seconds). The switch runs on core 0, the sim
# and the app on core 1 (taskset).
#
#   loadtest/app-latency.sh [RATE] [DURATION_S] [HOLD_S]     default: 100 10 3
#
# Needs release builds of the switch and the example (built if missing). Ports: HTTP 18080,
# sim 18090, SIP 15060, app 18700, media 30000-39999. Bounded: new calls stop after
# DURATION_S, each call after HOLD_S.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RATE="${1:-100}"; DURATION="${2:-10}"; HOLD="${3:-3}"
BIN="$ROOT/target/release/waswitch"
APP="$ROOT/target/release/examples/voice-app"
W="$(mktemp -d /tmp/app-latency.XXXXXX)"
[ -x "$BIN" ] && [ -x "$APP" ] || (cd "$ROOT" && cargo build --release --bin waswitch --example voice-app) || exit 2
SWITCH_CPUS="${SWITCH_CPUS:-0}"; HARNESS_CPUS="${HARNESS_CPUS:-1}"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

sed -e 's/127.0.0.1:8080/127.0.0.1:18080/' -e 's/127.0.0.1:8090/127.0.0.1:18090/' \
    -e 's/127.0.0.1:5060/127.0.0.1:15060/' -e 's/127.0.0.1:5070/127.0.0.1:15070/' \
    -e 's|127.0.0.1:8700|127.0.0.1:18700|' \
    -e "s|sqlite://waswitch-app-sim.db|sqlite://$W/app.db|" \
    -e "s|^prompts = \"prompts/en\"|prompts = \"$ROOT/config/examples/prompts/en\"|" \
    -e "s|^recording_dir = \"recordings\"|recording_dir = \"$W/recordings\"|" \
    -e 's/^\[media\]/[media]\nport_min = 30000\nport_max = 39999/' \
    "$ROOT/config/examples/app-sim.toml" >"$W/app.toml"
printf "\n[limits]\nmax_calls = 20000\nmax_cps = 5000\n" >>"$W/app.toml"

VOICE_APP_LISTEN=127.0.0.1:18700 VOICE_APP_SECRET=app-sim-secret-0001 \
  taskset -c "$HARNESS_CPUS" "$APP" >"$W/app.log" 2>&1 &
PIDS+=($!)
WASWITCH_LOG_LEVEL=warn taskset -c "$SWITCH_CPUS" "$BIN" run --config "$W/app.toml" >"$W/switch.log" 2>&1 &
SW=$!; PIDS+=("$SW")
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/ready >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:18080/ready >/dev/null || { echo "the switch did not start"; cat "$W/switch.log"; exit 2; }

echo "rate=$RATE/s duration=${DURATION}s hold=${HOLD}s switch on cpu $SWITCH_CPUS, sim and app on cpu $HARNESS_CPUS (results: $W)"
TICK=$(getconf CLK_TCK)
cpu0=$(awk '{print $14 + $15}' "/proc/$SW/stat")
timeout $((DURATION + HOLD + 90)) taskset -c "$HARNESS_CPUS" "$BIN" sim --config "$W/app.toml" \
  --rate "$RATE" --hold "$HOLD" --duration "$DURATION" --concurrency 2000 --listen 600 --expect-hz 600 \
  >"$W/sim.json" 2>"$W/sim.log"
cpu1=$(awk '{print $14 + $15}' "/proc/$SW/stat")
sleep 1
curl -sf http://127.0.0.1:18080/metrics >"$W/metrics.txt"

python3 - "$W" "$cpu0" "$cpu1" "$TICK" <<'PY'
import json, re, sys
w, cpu0, cpu1, tick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
metrics = open(f"{w}/metrics.txt").read()
def series(name, **labels):
    out = {}
    for line in metrics.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r'([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$', line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            out[got.get("quantile", "")] = float(m.group(3))
    return out
try:
    r = json.load(open(f"{w}/sim.json"))
    print(f"offered={r['attempts']} connected={r['connected']} failed={r['failed']} errors={r['errors']} elapsed_s={r['elapsed_s']:.1f}")
except Exception as e:
    print(f"no report from the sim: {e}")
start = series("waswitch_app_verbs_start_seconds", app="demo")
app = series("waswitch_app_latency_seconds", app="demo")
ok = series("waswitch_app_requests_total", app="demo", outcome="ok")
count = series("waswitch_app_verbs_start_seconds_count", app="demo")
ms = lambda v: "n/a" if v is None else f"{1000 * v:.3f}"
print(f"app answers ok={ok.get('', 0):.0f} verbs started={count.get('', 0):.0f}")
print(f"switch: app answer -> first verb acting p50_ms={ms(start.get('0.5'))} p99_ms={ms(start.get('0.99'))} max_ms={ms(start.get('1'))}")
print(f"app: request -> verbs ready (HTTP, JSON, checks, prompts) p50_ms={ms(app.get('0.5'))} p99_ms={ms(app.get('0.99'))}")
cpu_s = (cpu1 - cpu0) / tick
print(f"switch_cpu_s={cpu_s:.2f} on one core")
PY

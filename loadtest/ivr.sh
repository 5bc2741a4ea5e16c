#!/usr/bin/env bash
# What the IVR front door costs: the same user-initiated load twice through one switch
# build, once delivered straight to the PBX (config/examples/uic-sim.toml) and once through
# the IVR (config/examples/ivr-sim.toml: answer, the 2 s menu, the customer presses 1, dial
# support), each call held HOLD_S seconds from its media connecting. The switch runs on
# core 0, the sim and the SIPp PBX (PCMU, RTP echo: Opus <-> PCMU is transcoded in both
# runs) on core 1. Prints, per run: calls offered/connected/verified, the switch's CPU
# seconds, and its CPU milliseconds per call-second; then the IVR's ratio to the direct run.
#
#   loadtest/ivr.sh [RATE] [HOLD_S] [DURATION_S]        default: 5 10 60
#
# Needs a release build (the script builds it if missing), SIPp (Debian: sip-tester) and
# taskset. Ports: HTTP 18080, sim 18090, SIP 15060, PBX 15070, media 30000-39999. Bounded:
# new calls stop after DURATION_S, every call after its hold.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RATE="${1:-5}"; HOLD="${2:-10}"; DURATION="${3:-60}"
BIN="$ROOT/target/release/waswitch"
W="$(mktemp -d /tmp/ivr-load.XXXXXX)"
command -v sipp >/dev/null || { echo "missing sipp (apt-get install sip-tester)"; exit 2; }
command -v taskset >/dev/null || { echo "missing taskset (util-linux)"; exit 2; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --bin waswitch) || exit 2
TICK=$(getconf CLK_TCK)

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

# One run: KIND (direct|ivr), its configuration, extra sim arguments. Prints one line.
run() {
  local kind="$1" src="$2"; shift 2
  local conf="$W/$kind.toml"
  sed -e 's/127.0.0.1:8080/127.0.0.1:18080/' -e 's/127.0.0.1:8090/127.0.0.1:18090/' \
      -e 's/127.0.0.1:5060/127.0.0.1:15060/' -e 's/127.0.0.1:5070/127.0.0.1:15070/' \
      -e 's/127.0.0.1:5072/127.0.0.1:15072/' \
      -e "s|sqlite://[a-z-]*.db|sqlite://$W/$kind.db|" \
      -e "s|^voicemail_dir = .*|voicemail_dir = \"$W/voicemail\"|" \
      -e "s|^prompts = \"prompts\"|prompts = \"$ROOT/config/examples/prompts\"|" \
      -e 's/^\[media\]/[media]\nport_min = 30000\nport_max = 39999/' \
      -e 's/^codecs = .*/codecs = ["PCMU"]/' \
      "$ROOT/$src" >"$conf"
  printf "\n[limits]\nmax_calls = 20000\nmax_cps = 5000\n" >>"$conf"

  timeout $((DURATION + HOLD + 120)) taskset -c 1 sipp -sn uas -i 127.0.0.1 -p 15070 \
    -mi 127.0.0.1 -mp 40000 -rtp_echo -nostdin -bg >"$W/$kind-sipp.log" 2>&1
  local sipp; sipp=$(pgrep -n -f "sipp .*-p 15070") && PIDS+=("$sipp")

  WASWITCH_LOG_LEVEL=warn taskset -c 0 "$BIN" run --config "$conf" \
    --clock 2026-12-09T12:00:00-03:00 >"$W/$kind-switch.log" 2>&1 &
  local sw=$!; PIDS+=("$sw")
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/ready >/dev/null && break; sleep 0.1; done
  curl -sf http://127.0.0.1:18080/ready >/dev/null || { echo "$kind: the switch did not start"; cat "$W/$kind-switch.log"; exit 2; }

  local cpu0 cpu1
  cpu0=$(awk '{print $14 + $15}' "/proc/$sw/stat")
  timeout $((DURATION + HOLD + 90)) taskset -c 1 "$BIN" sim --config "$conf" --rate "$RATE" \
    --hold "$HOLD" --duration "$DURATION" "$@" >"$W/$kind-sim.json" 2>"$W/$kind-sim.log"
  for _ in $(seq 100); do
    grep -q '^waswitch_calls_active 0$' <(curl -sf http://127.0.0.1:18080/metrics) && break
    sleep 0.1
  done
  cpu1=$(awk '{print $14 + $15}' "/proc/$sw/stat")
  kill "$sw" "$sipp" 2>/dev/null; wait "$sw" 2>/dev/null
  python3 - "$kind" "$W/$kind-sim.json" "$cpu0" "$cpu1" "$TICK" "$HOLD" <<'PY' | tee -a "$W/results.txt"
import json, sys
kind, path, cpu0, cpu1, tick, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
r = json.load(open(path))
cpu_s = (cpu1 - cpu0) / tick
call_s = r["connected"] * hold
print(f"{kind}: offered={r['attempts']} connected={r['connected']} audio_verified={r['audio_verified']} "
      f"failed={r['failed']} errors={r['errors']} switch_cpu_s={cpu_s:.2f} "
      f"cpu_ms_per_call_s={1000 * cpu_s / max(call_s, 1):.3f}")
PY
}

echo "rate=$RATE/s hold=${HOLD}s duration=${DURATION}s; switch on core 0, sim and SIPp on core 1 (results: $W)"
run direct config/examples/uic-sim.toml
run ivr config/examples/ivr-sim.toml --dtmf 1 --dtmf-after 0.7 --listen 600,700,800,500,1000,440
python3 - "$W/results.txt" <<'PY'
import re, sys
v = {l.split(":")[0]: float(re.search(r"cpu_ms_per_call_s=([0-9.]+)", l).group(1)) for l in open(sys.argv[1])}
if "direct" in v and "ivr" in v and v["direct"] > 0:
    print(f"ivr/direct CPU per call-second: {v['ivr'] / v['direct']:.2f}")
PY

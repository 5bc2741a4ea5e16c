#!/usr/bin/env bash
# Soak: a steady load at a fixed share of the measured capacity, for a given time, to show
# that the switch's memory does not creep. Two kinds of calls at once, on 127.0.0.1:
#   - user-initiated WhatsApp calls: waswitch sim (Meta and the users, real ICE, DTLS-SRTP
#     and Opus, each user checking its tone at the start and the end) -> the switch -> a
#     SIPp PBX answering Opus and echoing it (passed through);
#   - SIP-transit calls: a SIPp caller streaming G.711 -> the switch (B2BUA, media anchored,
#     a CDR per call) -> a SIPp callee echoing it.
# Every SAMPLE_S seconds it samples the switch's resident memory, CPU, open fds, calls live
# and served, failed calls, RTP in/out/dropped and the sizes of its long-lived tables
# (waswitch_state_entries). It reports the RSS slope per call served (least squares over the
# samples after the warm-up, to the end of the load), the RSS at idle before the load, at
# its peak and after the load ended, and fails (exit 1) when a call failed or the slope is
# above the threshold. Writes plots (gnuplot) and report.md.
#
#   loadtest/soak.sh [OPTIONS] [DURATION_S]        default: 600
#
# Options:
#   --share PCT           share of the capacity to run at (default 70)
#   --uic-capacity N      concurrent pass-through user-initiated calls one switch core
#                         carries (default 400: `UIC_PBX=opus loadtest/uic.sh --find-max`,
#                         docs/loadtest/README.md)
#   --sip-capacity N      concurrent SIP-transit calls with G.711 audio one switch core
#                         carries (default 1000: docs/loadtest/README.md)
#   --mix PCT             the share of the load carried by user-initiated calls; the rest
#                         is SIP transit (default 50)
#   --hold S              each call's length once answered (default 30)
#   --warmup S            samples before this are left out of the slope (default 4 holds,
#                         at least 120 s)
#   --max-slope KIB       the highest RSS slope per call served that passes (default 1)
#   --sample S            seconds between samples (default 5)
#   --switch-cpus LIST    pin the switch (taskset -c; default 0)
#   --harness-cpus LIST   pin the sim and SIPp (default 1)
#
# The concurrency of each kind: share x mix x uic-capacity user-initiated calls, and
# share x (100 - mix) x sip-capacity transit calls, each started at concurrency / hold per
# second, so the switch's core is loaded to about `share` of what it carries.
# WASWITCH_BIN=path runs another build (e.g. one with another allocator); WASWITCH_ENV adds
# environment to the switch's process (e.g. "MALLOC_ARENA_MAX=2"); WASWITCH_WRAP runs the
# switch under a profiler (e.g. "heaptrack -o /tmp/soak-heap": its allocations over the
# run, read with heaptrack_print); SOAK_KILL=1 ends the switch with SIGKILL once the load is
# over and sampled, so what a heap profiler reports as leaked is what the switch still held
# (a clean shutdown frees its tables first).
#
# The last line is one JSON object (rss_slope_bytes_per_call, rss_idle_kib, rss_after_kib,
# calls_served, failed, ...), for scripts comparing runs.
#
# Needs a release build (cargo build --release), SIPp (Debian sip-tester) and gnuplot
# (gnuplot-nox) for the plots. Ports (below the kernel's ephemeral range, so the sim's own
# sockets never take them): HTTP 18080, sim 18090, SIP 15060, PBX 15070, transit callee
# 15071, transit caller 15080, switch media 20000-29999, SIPp media 12000, 12002, 12010,
# 12012, 12100 and 12102. Bounded: new calls stop after DURATION_S, every process is killed
# after DURATION_S + 4 holds + 300 s.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARE=70; UIC_CAP=400; SIP_CAP=1000; MIX=50; HOLD=30; WARMUP=""; MAX_SLOPE=1; SAMPLE=5
SWITCH_CPUS=0; HARNESS_CPUS=1; ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --share) SHARE="$2"; shift 2 ;;
    --uic-capacity) UIC_CAP="$2"; shift 2 ;;
    --sip-capacity) SIP_CAP="$2"; shift 2 ;;
    --mix) MIX="$2"; shift 2 ;;
    --hold) HOLD="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --max-slope) MAX_SLOPE="$2"; shift 2 ;;
    --sample) SAMPLE="$2"; shift 2 ;;
    --switch-cpus) SWITCH_CPUS="$2"; shift 2 ;;
    --harness-cpus) HARNESS_CPUS="$2"; shift 2 ;;
    -h|--help) sed -n '2,56p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)"; exit 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
DURATION="${ARGS[0]:-600}"
[ -n "$WARMUP" ] || WARMUP=$(( HOLD * 4 > 120 ? HOLD * 4 : 120 ))
UIC_CALLS=$(( SHARE * MIX * UIC_CAP / 10000 ))
SIP_CALLS=$(( SHARE * (100 - MIX) * SIP_CAP / 10000 ))
BIN="${WASWITCH_BIN:-$ROOT/target/release/waswitch}"
SW_PIN=(taskset -c "$SWITCH_CPUS"); H_PIN=(taskset -c "$HARNESS_CPUS")
BOUND=$(( DURATION + HOLD * 4 + 300 ))
W="$(mktemp -d /tmp/soak.XXXXXX)"
L=127.0.0.1
for tool in sipp taskset curl python3; do
  command -v $tool >/dev/null || { echo "missing $tool (apt-get install sip-tester util-linux curl python3)"; exit 2; }
done
[ -x "$BIN" ] || { echo "no waswitch binary at $BIN (cargo build --release)"; exit 2; }
[ "$WARMUP" -lt "$DURATION" ] || { echo "the warm-up ($WARMUP s) must be shorter than the run ($DURATION s)"; exit 2; }

PIDS=(); SW=""; SWW=""
cleanup() {
  # The switch first, given time to shut down cleanly (a profiler wrapping it writes its
  # data at the exit), then the rest.
  if [ -n "$SW" ] && kill "$SW" 2>/dev/null; then
    for _ in $(seq 600); do kill -0 "$SW" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -n "$SWW" ] && [ "$SWW" != "$SW" ]; then
    for _ in $(seq 600); do kill -0 "$SWW" 2>/dev/null || break; sleep 0.1; done
  fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT

# The switch: the user-initiated rehearsal (config/examples/uic-sim.toml) on the soak's
# ports, plus a trunk and a route for the transit calls (numbers starting with 9).
sed -e "s/127.0.0.1:8080/$L:18080/" -e "s/127.0.0.1:8090/$L:18090/" \
    -e "s/127.0.0.1:5060/$L:15060/" -e "s/127.0.0.1:5070/$L:15070/" \
    -e "s|sqlite://waswitch-uic-sim.db|sqlite://$W/soak.db|" \
    -e 's/^\[media\]/[media]\nport_min = 20000\nport_max = 29999/' \
    "$ROOT/config/examples/uic-sim.toml" >"$W/soak.toml"
cat >>"$W/soak.toml" <<TOML

[[trunk]]
name = "transit"
uri = "sip:$L:15071"
transport = "udp"
accept_from = ["$L"]
invite_timeout_ms = 4000
options_interval_secs = 0

[[route]]
name = "transit"
prefix = "9"
trunks = ["transit"]

[limits]
max_calls = 20000
max_cps = 5000
TOML

# The audio of the transit calls: one second of a 1 kHz tone, raw mu-law.
python3 - "$W/soak-tone.pcmu" <<'PY'
import math, sys
def ulaw(x):
    x = int(x); sign = 0x80 if x < 0 else 0; x = min(abs(x), 32635) + 132
    exp = next(e for e in range(7, -1, -1) if x & (1 << (e + 7)) or e == 0)
    return ~(sign | (exp << 4) | ((x >> (exp + 3)) & 0x0F)) & 0xFF
open(sys.argv[1], "wb").write(bytes(ulaw(8000 * math.sin(2 * math.pi * 1000 * i / 8000))
                                     for i in range(8000)))
PY

# The PBX of the user-initiated calls (answers Opus, echoes), and the transit callee
# (SIPp's built-in callee: answers PCMU, echoes).
( cd "$W" && exec timeout $BOUND "${H_PIN[@]}" sipp -sf "$ROOT/loadtest/sipp/uic_uas_opus.xml" \
    -i $L -p 15070 -mi $L -mp 12000 -rtp_echo -nostdin -trace_err -error_file "$W/pbx.err" \
    >"$W/pbx.log" 2>&1 ) &
PIDS+=($!)
( cd "$W" && exec timeout $BOUND "${H_PIN[@]}" sipp -sn uas -i $L -p 15071 -mi $L -mp 12010 \
    -rtp_echo -nostdin -trace_err -error_file "$W/callee.err" >"$W/callee.log" 2>&1 ) &
PIDS+=($!)

env ${WASWITCH_ENV:-} WASWITCH_LOG_LEVEL=warn timeout $BOUND "${SW_PIN[@]}" ${WASWITCH_WRAP:-} "$BIN" run \
  --config "$W/soak.toml" >"$W/switch.log" 2>&1 &
SW=$!; SWW=$SW; PIDS+=("$SW")
for _ in $(seq 300); do curl -sf http://$L:18080/ready >/dev/null && break; sleep 0.1; done
curl -sf http://$L:18080/ready >/dev/null || { echo "the switch did not start"; cat "$W/switch.log"; exit 2; }
# The switch itself runs under timeout (and maybe a profiler): it is the newest process of
# that command line.
SW=$(pgrep -n -f "$BIN run --config $W/soak.toml") || { echo "the switch's process not found"; exit 2; }

# One sample: time, the switch's CPU ticks, RSS (KiB), open fds, then its metrics of
# interest (calls, RTP, table sizes) as name{labels}=value.
sample() {
  local fds metrics
  fds=$(ls "/proc/$SW/fd" 2>/dev/null | wc -l)
  metrics=$(curl -sf --max-time 2 http://$L:18080/metrics |
    grep -E '^waswitch_(calls_active|media_legs_active|cdrs_pending|process_threads|calls_total|calls_refused_total|rtp_packets_total|rtp_dropped_total|state_entries)[ {]' |
    tr ' ' '=' | tr '\n' ' ')
  echo "$(date +%s.%N) $(awk '{print $14 + $15}' "/proc/$SW/stat") $(awk '/VmRSS/ {print $2}' "/proc/$SW/status") $fds $metrics"
}
sleep 3
sample >"$W/idle.txt"
( while kill -0 "$SW" 2>/dev/null; do sample; sleep "$SAMPLE"; done ) >"$W/samples.txt" &
PIDS+=($!)

echo "soak: ${DURATION}s at ${SHARE}% of capacity: $UIC_CALLS user-initiated (of $UIC_CAP) + $SIP_CALLS SIP-transit (of $SIP_CAP) concurrent calls, ${HOLD}s each; switch on CPU $SWITCH_CPUS, harness on CPU $HARNESS_CPUS (results: $W)"
START=$(date +%s.%N)
if [ "$UIC_CALLS" -gt 0 ]; then
  ( exec timeout $BOUND "${H_PIN[@]}" "$BIN" sim --config "$W/soak.toml" \
      --rate "$(python3 -c "print($UIC_CALLS / $HOLD)")" --hold "$HOLD" --duration "$DURATION" \
      --concurrency $(( UIC_CALLS * 2 )) >"$W/sim.json" 2>"$W/sim.log" ) &
  SIM=$!; PIDS+=("$SIM")
fi
if [ "$SIP_CALLS" -gt 0 ]; then
  # Calls per 10 s, so that low rates stay exact.
  PER10=$(( (SIP_CALLS * 10 + HOLD / 2) / HOLD )); [ "$PER10" -gt 0 ] || PER10=1
  ( cd "$W" && exec timeout $BOUND "${H_PIN[@]}" sipp $L:15060 -sf "$ROOT/loadtest/sipp/soak_uac.xml" \
      -s 9000 -i $L -p 15080 -mi $L -mp 12100 -r "$PER10" -rp 10000 -d $(( HOLD * 1000 )) \
      -m $(( PER10 * DURATION / 10 )) -l $(( SIP_CALLS * 2 )) -nostdin -trace_err \
      -error_file "$W/caller.err" -trace_stat -stf "$W/caller.csv" -fd "$SAMPLE" \
      -recv_timeout 10000 >"$W/caller.log" 2>&1 ) &
  CALLER=$!; PIDS+=("$CALLER")
fi
[ -n "${SIM:-}" ] && wait "$SIM"
[ -n "${CALLER:-}" ] && wait "$CALLER"
END=$(date +%s.%N)
# The load has ended: let the last CDRs and timers settle, then the memory kept.
sleep 30
sample >"$W/after.txt"
sleep 30
sample >>"$W/after.txt"
if [ "${SOAK_KILL:-0}" = 1 ]; then
  kill -9 "$SW" 2>/dev/null
  for _ in $(seq 600); do kill -0 "$SWW" 2>/dev/null || break; sleep 0.1; done
fi
sleep 1

PARAMS="duration_s=$DURATION share_pct=$SHARE uic_capacity=$UIC_CAP sip_capacity=$SIP_CAP mix_pct=$MIX hold_s=$HOLD warmup_s=$WARMUP max_slope_kib=$MAX_SLOPE sample_s=$SAMPLE uic_calls=$UIC_CALLS sip_calls=$SIP_CALLS switch_cpus=$SWITCH_CPUS harness_cpus=$HARNESS_CPUS switch_env=$(echo "${WASWITCH_ENV:-none}" | tr ' ' ',')"
python3 "$ROOT/loadtest/soak_report.py" "$W" "$ROOT" "$START" "$END" "$PARAMS"

#!/usr/bin/env bash
# User-initiated WhatsApp calls under load: waswitch sim (WhatsApp users with real WebRTC
# media, user-initiated calls at a rate, each held for a time) -> waswitch -> a SIPp PBX
# answering with RTP echo, all on 127.0.0.1. Prints offered/connected/failed, audio verified,
# setup latency p50/p99 (the user's offer to media connected), the switch's CPU seconds per
# call and resident memory per concurrent call, and writes plots (gnuplot: concurrent calls
# and CPU over time, resident memory) and report.md (parameters, figures, plots).
#
#   loadtest/uic.sh [OPTIONS] [RATE] [HOLD_S] [DURATION_S] [CONCURRENCY]   default: 20 10 60 2000
#   UIC_PBX=opus loadtest/uic.sh ...      the PBX answers Opus: no transcoding in the switch
#
# Options:
#   --switch-cpus LIST    pin the switch to these CPUs (taskset -c), e.g. 0
#   --harness-cpus LIST   pin the sim and SIPp to these CPUs, e.g. 1
#   --media-threads N     threads carrying the sim's users' media (default 1)
#   --find-max            raise the concurrency in steps (HOLD_S-long calls started over
#                         HOLD_S/2 seconds, --step more each step, up to CONCURRENCY) until a
#                         call fails or the echo loses more than 0.1 %; reports the highest
#                         step with no failure
#   --step N              the --find-max step (default 250)
#
# SIPp echoes every call's RTP on one socket: with the default receive buffer
# (net.core.rmem_default, 208 KiB) it drops packets beyond a few hundred calls. For such runs
# raise it first (sudo sysctl -w net.core.rmem_default=4194304) and restore it after.
#
# The last line is one JSON object (mode, cpu_ms_per_call_second, max_concurrent_zero_fail,
# mem_kib_per_call, setup_p50_ms, setup_p99_ms, loss_pct, ...), for scripts comparing runs.
# latency_added_* and jitter_added_* (p50/p99 per direction, ms) come from the switch's
# histograms of the time a packet spends in it (kernel receive stamp to send), taken over the
# calls' plateau (find-max: from the last call's start to half its hold).
# UIC_BIN=path runs another build of waswitch (switch and sim), for comparing two builds.
# cpu_ms_per_call_second is the switch's CPU time over the seconds calls were up (the sum
# of concurrent calls sampled each second); loss_pct is the echo's loss seen by the users
# (Opus packets back against packets sent, both ways through the switch and the PBX).
#
# Needs a release build (cargo build --release; the script builds it if missing) and SIPp
# (Debian package sip-tester). Ports: HTTP 18080, sim 18090, SIP 15060, PBX 15070, media
# 30000-39999. The run is bounded: new calls stop after DURATION_S, every call after its hold.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SWITCH_CPUS=""; HARNESS_CPUS=""; FIND_MAX=0; MEDIA_THREADS=1; STEP=250; ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --switch-cpus) SWITCH_CPUS="$2"; shift 2 ;;
    --harness-cpus) HARNESS_CPUS="$2"; shift 2 ;;
    --media-threads) MEDIA_THREADS="$2"; shift 2 ;;
    --find-max) FIND_MAX=1; shift ;;
    --step) STEP="$2"; shift 2 ;;
    -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
set -- "${ARGS[@]}"
RATE="${1:-20}"; HOLD="${2:-10}"; DURATION="${3:-60}"; CONCURRENCY="${4:-2000}"
MODE=transcoded; [ "${UIC_PBX:-pcmu}" = opus ] && MODE=passthrough
pin() { if [ -n "$1" ]; then echo taskset -c "$1"; fi; }
SW_PIN=$(pin "$SWITCH_CPUS"); H_PIN=$(pin "$HARNESS_CPUS")
BIN="${UIC_BIN:-$ROOT/target/release/waswitch}"
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
grep -q '^options_interval_secs' "$W/uic.toml" ||
  sed -i 's/^invite_timeout_ms = 4000$/invite_timeout_ms = 4000\noptions_interval_secs = 0/' "$W/uic.toml"
printf "\n[limits]\nmax_calls = 20000\nmax_cps = 5000\n" >>"$W/uic.toml"

# The PBX: SIPp's built-in callee (answers PCMU: the switch transcodes Opus <-> PCMU), or
# with UIC_PBX=opus a callee answering Opus (passed through), echoing RTP, bounded in time.
if [ "${UIC_PBX:-pcmu}" = opus ]; then
  SCENARIO=(-sf "$ROOT/loadtest/sipp/uic_uas_opus.xml")
else
  SCENARIO=(-sn uas)
fi
BOUND=$((DURATION + HOLD + 120)); [ "$FIND_MAX" = 1 ] && BOUND=$(( (HOLD * 2 + 120) * (CONCURRENCY / STEP + 1) ))
timeout $BOUND $H_PIN sipp "${SCENARIO[@]}" -i 127.0.0.1 -p 15070 -mi 127.0.0.1 \
  -mp 40000 -rtp_echo -nostdin -bg -trace_err -error_file "$W/sipp.err" >"$W/sipp.log" 2>&1
SIPP=$(pgrep -n -f "sipp .*-p 15070") && PIDS+=("$SIPP")

WASWITCH_LOG_LEVEL=warn $SW_PIN "$BIN" run --config "$W/uic.toml" >"$W/switch.log" 2>&1 &
SW=$!; PIDS+=("$SW")
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/ready >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:18080/ready >/dev/null || { echo "the switch did not start"; cat "$W/switch.log"; exit 2; }

# Once a second: concurrent calls (the switch's gauge), the switch's CPU ticks and RSS, and
# the harness's CPU ticks (SIPp, and the sim placing calls).
TICK=$(getconf CLK_TCK)
ticks() { if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
(
  while kill -0 "$SW" 2>/dev/null; do
    calls=$(curl -sf http://127.0.0.1:18080/metrics | sed -n 's/^waswitch_calls_active \([0-9.]*\)$/\1/p')
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$SW/status")
    SIMP=$(pgrep -n -f " sim --config $W/uic.toml")
    echo "$(date +%s.%N) ${calls:-0} $(ticks "$SW") $rss $(ticks "$SIPP") $(ticks "$SIMP")"
    sleep 1
  done
) >"$W/samples.txt" &
PIDS+=($!)

# The switch's media latency histograms (time in the switch, delay variation), for the
# window between two scrapes.
scrape() {
  curl -sf http://127.0.0.1:18080/metrics |
    grep -E '^waswitch_media_(latency_added|delay_variation)_seconds_bucket' >"$1"
}

# One run of the sim: RATE HOLD DURATION CONCURRENCY TAG [FROM TO]; its report in
# $W/TAG.json, the switch's CPU ticks before and after in $W/TAG.cpu, its latency
# histograms FROM and TO seconds into the run (the calls' plateau) in $W/TAG.m0, TAG.m1.
run_sim() {
  local rate=$1 hold=$2 duration=$3 concurrency=$4 tag=$5 from=${6:-0} to=${7:-$(($2 + $3))}
  ( sleep "$from"; scrape "$W/$tag.m0"; sleep $((to - from)); scrape "$W/$tag.m1" ) &
  echo "$(awk '{print $14 + $15}' "/proc/$SW/stat") $(date +%s.%N)" >"$W/$tag.cpu"
  timeout $((duration + hold + 90)) $H_PIN "$BIN" sim --config "$W/uic.toml" --rate "$rate" \
    --hold "$hold" --duration "$duration" --concurrency "$concurrency" \
    --media-threads "$MEDIA_THREADS" >"$W/$tag.json" 2>"$W/$tag.log"
  local code=$?
  echo "$(awk '{print $14 + $15}' "/proc/$SW/stat") $(date +%s.%N)" >>"$W/$tag.cpu"
  return $code
}

[ "$(cat /proc/sys/net/core/rmem_default)" -lt 1048576 ] &&
  echo "note: net.core.rmem_default is $(cat /proc/sys/net/core/rmem_default): SIPp's echo drops packets beyond a few hundred calls"
echo "mode=$MODE switch_cpus=${SWITCH_CPUS:-any} harness_cpus=${HARNESS_CPUS:-any} media_threads=$MEDIA_THREADS (results: $W)"
STEPS=()
if [ "$FIND_MAX" = 1 ]; then
  # Each step: calls of HOLD seconds started over HOLD/2 seconds, so all of them are up
  # at once for half their hold.
  for ((c = STEP; c <= CONCURRENCY; c += STEP)); do
    ramp=$(( HOLD / 2 > 1 ? HOLD / 2 : 1 ))
    echo "step: $c concurrent calls (rate $((c / ramp))/s for ${ramp}s, hold ${HOLD}s)"
    run_sim "$(( c / ramp ))" "$HOLD" "$ramp" "$c" "step$c" "$ramp" "$((ramp + HOLD / 2))"
    STEPS+=("step$c")
    python3 - "$W/step$c.json" <<'STEP' || break
import json, sys
r = json.load(open(sys.argv[1]))
loss = 100 * (1 - r["packets_in"] / max(r["packets_out"], 1))
print(f"  offered={r['attempts']} failed={r['failed']} audio_verified={r['audio_verified']} "
      f"peak={r['peak_concurrency']} setup_p99_ms={r['setup_p99_ms']} echo_loss_pct={loss:.3f}")
sys.exit(1 if r["failed"] or loss > 0.1 else 0)
STEP
    sleep 3
  done
else
  echo "rate=$RATE/s hold=${HOLD}s duration=${DURATION}s concurrency<=$CONCURRENCY"
  # The plateau: from the first calls' end to the last calls' start.
  if [ "$DURATION" -gt "$HOLD" ]; then
    run_sim "$RATE" "$HOLD" "$DURATION" "$CONCURRENCY" run "$HOLD" "$DURATION"
  else
    run_sim "$RATE" "$HOLD" "$DURATION" "$CONCURRENCY" run
  fi
  STEPS=(run)
fi
sleep 1

PARAMS="rate=$RATE hold_s=$HOLD duration_s=$DURATION concurrency=$CONCURRENCY step=$STEP switch_cpus=${SWITCH_CPUS:-any} harness_cpus=${HARNESS_CPUS:-any} media_threads=$MEDIA_THREADS"
python3 - "$W" "$TICK" "$MODE" "$FIND_MAX" "$ROOT" "$PARAMS" "${STEPS[@]}" <<'PY'
import json, os, sys
w, tick, mode, find_max, root, params, steps = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                                sys.argv[4] == "1", sys.argv[5], sys.argv[6],
                                                sys.argv[7:])
sys.path.insert(0, os.path.join(root, "loadtest"))
import report
params = dict(kv.split("=", 1) for kv in params.split())
samples = [list(map(float, l.split())) for l in open(f"{w}/samples.txt") if len(l.split()) == 6]

def buckets(path):
    # {(metric, direction): [(le, cumulative count)]}
    out = {}
    try:
        lines = open(path).read().split("\n")
    except OSError:
        return out
    for l in lines:
        if not l:
            continue
        head, value = l.rsplit(" ", 1)
        name = head.split("{")[0].replace("waswitch_media_", "").replace("_seconds_bucket", "")
        labels = dict(kv.split("=", 1) for kv in head.split("{")[1].rstrip("}").split(","))
        le = labels["le"].strip('"')
        out.setdefault((name, labels["direction"].strip('"')), []).append(
            (float("inf") if le == "+Inf" else float(le), float(value)))
    return out

# The histograms' highest bound (s): a quantile beyond it is reported as that bound.
LATENCY_TOP = 0.1

quantile = report.quantile

def latency(tag):
    # p50/p99 in ms of the time in the switch and its variation, per direction, over the
    # plateau's window.
    a, b = buckets(f"{w}/{tag}.m0"), buckets(f"{w}/{tag}.m1")
    out = {}
    for key, after in b.items():
        before = dict(a.get(key, []))
        cum = sorted((le, c - before.get(le, 0.0)) for le, c in after)
        p50, p99 = quantile(cum, 0.5), quantile(cum, 0.99)
        if p50 is not None:
            out[key] = (1000 * p50, 1000 * p99, cum[-1][1])
    return out

rows = []
for tag in steps:
    try:
        r = json.load(open(f"{w}/{tag}.json"))
    except Exception as e:
        print(f"{tag}: no report from the sim: {e}")
        continue
    (c0, t0), (c1, t1) = [tuple(map(float, l.split())) for l in open(f"{w}/{tag}.cpu")][:2]
    cpu_s = (c1 - c0) / tick
    window = [s for s in samples if t0 <= s[0] <= t1]
    # Call-seconds: concurrent calls sampled once a second, summed over the run.
    call_s = sum(b[1] * (b[0] - a[0]) for a, b in zip(window, window[1:]))
    peak = max((s[1] for s in window), default=0)
    rss_base = window[0][3] if window else 0
    rss_peak = max((s[3] for s in window), default=0)
    loss = 100 * (1 - r["packets_in"] / max(r["packets_out"], 1))
    # The harness: SIPp's ticks over the window, and the sim's (its process is new each
    # step: its last sample is its total).
    sipp_s = (window[-1][4] - window[0][4]) / tick if window else 0
    sim_s = max((s[5] for s in window), default=0) / tick
    print(f"{tag}: harness_cpu_s: sipp={sipp_s:.1f} sim={sim_s:.1f} "
          f"(per call-second: sipp {1000 * sipp_s / max(call_s, 1):.2f} ms, sim {1000 * sim_s / max(call_s, 1):.2f} ms)")
    rows.append(dict(tag=tag, r=r, cpu_s=cpu_s, call_s=call_s, peak=peak, loss=loss,
                     mem=(rss_peak - rss_base) / max(peak, 1), rss_peak=rss_peak))
    print(f"{tag}: offered={r['attempts']} connected={r['connected']} failed={r['failed']} "
          f"audio_verified={r['audio_verified']} errors={r['errors']}")
    print(f"{tag}: setup_p50_ms={r['setup_p50_ms']} setup_p99_ms={r['setup_p99_ms']} "
          f"peak_concurrent={peak:.0f} call_seconds={call_s:.0f} echo_loss_pct={loss:.3f}")
    print(f"{tag}: switch_cpu_s={cpu_s:.1f} cpu_ms_per_call_second={1000 * cpu_s / max(call_s, 1):.2f} "
          f"rss_peak_kib={rss_peak:.0f} mem_kib_per_call={(rss_peak - rss_base) / max(peak, 1):.1f}")
    lat = latency(tag)
    for (name, d), (p50, p99, n) in sorted(lat.items()):
        what = "latency_added" if name == "latency_added" else "jitter_added"
        top = 1000 * LATENCY_TOP
        shown = lambda v: f">={top:.0f}" if v >= top else f"{v:.3f}"
        print(f"{tag}: {what} {d}: p50={shown(p50)} ms p99={shown(p99)} ms ({n:.0f} packets sampled on the plateau)")
    rows[-1]["lat"] = lat
good = [x for x in rows if x["r"]["failed"] == 0 and x["loss"] <= 0.1]
best = max(good, key=lambda x: x["peak"], default=None)
last = best or (rows[-1] if rows else None)
summary = {"mode": mode, "find_max": find_max,
           "max_concurrent_zero_fail": int(best["peak"]) if best else 0}
if last:
    summary.update({
        "cpu_ms_per_call_second": round(1000 * last["cpu_s"] / max(last["call_s"], 1), 3),
        "mem_kib_per_call": round(last["mem"], 1),
        "setup_p50_ms": last["r"]["setup_p50_ms"], "setup_p99_ms": last["r"]["setup_p99_ms"],
        "loss_pct": round(last["loss"], 4), "offered": last["r"]["attempts"],
        "failed": last["r"]["failed"], "call_seconds": round(last["call_s"]),
        "switch_cpu_s": round(last["cpu_s"], 2)})
    for (name, d), (p50, p99, _) in last.get("lat", {}).items():
        what = "latency_added" if name == "latency_added" else "jitter_added"
        summary[f"{what}_{d}_p50_ms"] = round(p50, 3)
        summary[f"{what}_{d}_p99_ms"] = round(p99, 3)
peak = max((s[1] for s in samples), default=0)

# Plots: concurrent calls and the switch's CPU over time; its resident memory.
run = (f"find-max, steps of {params['step']} up to {params['concurrency']}, hold {params['hold_s']} s"
       if find_max else
       f"{params['rate']} calls/s, hold {params['hold_s']} s, for {params['duration_s']} s")
title = f"uic.sh {mode}: {run} (switch CPUs {params['switch_cpus']})"
plots = []
if len(samples) > 1:
    t0 = samples[0][0]
    xs = [s[0] - t0 for s in samples[1:]]
    cpu = [100 * (b[2] - a[2]) / tick / max(b[0] - a[0], 1e-9) for a, b in zip(samples, samples[1:])]
    sipp = [100 * (b[4] - a[4]) / tick / max(b[0] - a[0], 1e-9) for a, b in zip(samples, samples[1:])]
    plots.append(report.plot(f"{w}/uic.png", title, "time since the switch started (s)", [
        report.Series("concurrent calls", xs, [s[1] for s in samples[1:]], "calls"),
        report.Series("switch CPU", xs, cpu, "% of one core", right=True),
        report.Series("SIPp CPU", xs, sipp, "% of one core", right=True),
    ]))
    plots.append(report.plot(f"{w}/uic-memory.png", title, "time since the switch started (s)", [
        report.Series("switch resident memory", xs, [s[3] / 1024 for s in samples[1:]], "MiB"),
        report.Series("concurrent calls", xs, [s[1] for s in samples[1:]], "calls", right=True),
    ]))
table = [{
    "run": x["tag"], "offered": x["r"]["attempts"], "failed": x["r"]["failed"],
    "peak concurrent": int(x["peak"]),
    "switch CPU ms per call-second": round(1000 * x["cpu_s"] / max(x["call_s"], 1), 2),
    "memory KiB per call": round(x["mem"], 1),
    "setup p50 / p99 ms": " / ".join(f"{v:.1f}" if isinstance(v, (int, float)) else "-"
                                     for v in (x["r"]["setup_p50_ms"], x["r"]["setup_p99_ms"])),
    "loss %": round(x["loss"], 3),
} for x in rows]
params["mode"] = mode
report.write(f"{w}/report.md", f"User-initiated calls under load: {title}", params, table,
             plots, [f"summary: `{json.dumps(summary)}`"])
for p in plots:
    if p:
        print(f"plot: {p}")
print(f"report: {w}/report.md")
print(json.dumps(summary))
PY

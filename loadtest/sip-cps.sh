#!/usr/bin/env bash
# Calls per second through waswitch (B2BUA: two dialogs, media anchored, a CDR per call) and
# through Kamailio (transaction-stateful, record-routing proxy), in the same run, at rising
# rates. For each system and rate: calls, failures, CPU seconds used by the system under
# test, and CPU seconds per 1,000 calls; then the highest rate each carried with zero failed
# calls, and the CPU ratio waswitch / Kamailio.
#
#   loadtest/sip-cps.sh [OPTIONS] [DURATION_S] [RATE ...]   default: 10 s at 200 1000 2000
#
# Options:
#   --switch-cpus LIST    pin waswitch and Kamailio (each in its turn) to these CPUs
#                         (taskset -c; default 0)
#   --harness-cpus LIST   pin the SIPp caller and callee to these CPUs (default 1)
#   --overload RATE       after the table, offer RATE calls/s to waswitch configured with
#                         limits.max_cps = --max-cps: every call must either complete or be
#                         refused at once with 503 and Retry-After (no timeout, no call left
#                         half set up: the switch ends with no live call and one CDR per
#                         completed call)
#   --max-cps N           waswitch's limits.max_cps (default 0: no limit; the overload run
#                         needs it, e.g. the highest rate with zero failures)
#   --cdr-batch N         waswitch's store.cdr_batch_size (default: the switch's own)
#
# The last line is one JSON object: rates, CPU s per 1,000 calls of each system per rate,
# ratios, the highest rates with zero failures, and the overload run's counts. Before it, a
# plot (sip-cps.png: CPU per 1,000 calls against the rate, gnuplot) and report.md.
#
# Needs: sipp (Debian sip-tester), kamailio, a release build (cargo build --release; or set
# WASWITCH_BIN). Everything runs on 127.0.0.1; every SIPp run is bounded by -m and timeouts.
# Ports: waswitch SIP 5062/udp, HTTP 18080; Kamailio 5064/udp; callee 5071; caller 5080.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${WASWITCH_BIN:-$ROOT/target/release/waswitch}"
SWITCH_CPUS=0; HARNESS_CPUS=1; OVERLOAD=""; MAX_CPS=0; CDR_BATCH=""; ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --switch-cpus) SWITCH_CPUS="$2"; shift 2 ;;
    --harness-cpus) HARNESS_CPUS="$2"; shift 2 ;;
    --overload) OVERLOAD="$2"; shift 2 ;;
    --max-cps) MAX_CPS="$2"; shift 2 ;;
    --cdr-batch) CDR_BATCH="$2"; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
set -- "${ARGS[@]}"
DUR="${1:-10}"; shift || true
RATES=("$@"); [ ${#RATES[@]} -eq 0 ] && RATES=(200 1000 2000)
W="$(mktemp -d /tmp/sip-cps.XXXXXX)"
L=127.0.0.1
SW_PIN=(taskset -c "$SWITCH_CPUS"); H_PIN=(taskset -c "$HARNESS_CPUS")
# Socket buffers of SIPp and Kamailio, the size waswitch asks for its own SIP socket (their
# defaults, 64 KiB and 256 KiB, drop datagrams in bursts at these rates, so every system
# would be measured partly on its retransmissions; the kernel caps this at
# net.core.rmem_max).
SOCK_BUF=4194304
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT

for tool in sipp kamailio taskset; do
  command -v $tool >/dev/null || { echo "missing $tool (apt-get install sip-tester kamailio util-linux)"; exit 2; }
done
[ -x "$BIN" ] || { echo "no waswitch binary at $BIN (cargo build --release)"; exit 2; }
for cap in rmem_max wmem_max; do
  [ "$(cat /proc/sys/net/core/$cap)" -lt "$SOCK_BUF" ] &&
    echo "note: net.core.$cap is $(cat /proc/sys/net/core/$cap): every system gets less than" \
      "$SOCK_BUF bytes of socket buffer, and bursts are dropped and retransmitted" \
      "(sysctl -w net.core.$cap=$SOCK_BUF)"
done

switch_config() { # switch_config FILE MAX_CPS
  cat >"$1" <<TOML
[node]
id = "cps"
[http]
listen = "$L:18080"
[sip]
listen = "$L:5062"
transports = ["udp"]
[media]
ip = "$L"
port_min = 20000
port_max = 59999
[store]
url = "sqlite://$W/cps.db"
${CDR_BATCH:+cdr_batch_size = $CDR_BATCH}
[log]
level = "warn"
[limits]
max_cps = $2
max_calls = 20000
[[trunk]]
name = "callee"
uri = "sip:$L:5071"
accept_from = ["$L"]
options_interval_secs = 0
[[route]]
name = "all"
trunks = ["callee"]
TOML
}
switch_config "$W/waswitch.toml" "$MAX_CPS"

wait_udp() { for _ in $(seq 100); do ss -lun | grep -q "$L:$1 " && return 0; sleep 0.1; done; return 1; }

# The callee both systems send their calls to.
"${H_PIN[@]}" sipp -sf "$ROOT/loadtest/sipp/cps_uas.xml" -i $L -p 5071 -bind_local -mi $L -mp 6010 \
  -ci $L -cp 8892 -buff_size $SOCK_BUF -nostdin -timeout 3600s -default_behaviors all,-abortunexp \
  >"$W/uas.out" 2>&1 &
PIDS+=("$!")

start_switch() { # start_switch CONFIG LOG
  "${SW_PIN[@]}" "$BIN" run --config "$1" >"$2" 2>&1 &
  WPID=$!; PIDS+=("$WPID")
  wait_udp 5062 || { echo "waswitch did not start"; tail "$2"; exit 2; }
}
start_switch "$W/waswitch.toml" "$W/waswitch.log"
mkdir -p "$W/kam"
"${SW_PIN[@]}" kamailio -f "$ROOT/loadtest/kamailio/proxy.cfg" -DD -E -Y "$W/kam" -w "$W/kam" \
  -A LISTEN=udp:$L:5064 -A DOWNSTREAM="\"sip:$L:5071\"" -A CHILDREN=2 -b $SOCK_BUF -m 256 -M 16 \
  >"$W/kamailio.log" 2>&1 &
KPID=$!; PIDS+=("$KPID")
wait_udp 5064 || { echo "kamailio did not start"; tail "$W/kamailio.log"; exit 2; }
wait_udp 5071 || { echo "callee did not start"; exit 2; }

TCK=$(getconf CLK_TCK)
cpu_ticks() { # utime+stime of a process and its children
  local t=0 p
  for p in "$1" $(pgrep -P "$1"); do
    t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
counter() { # counter NAME CSV: the last row's value of a SIPp cumulative column
  python3 - "$1" "$2" <<'PY'
import sys
name, path = sys.argv[1], sys.argv[2]
rows = [l.rstrip("\n").split(";") for l in open(path) if l.strip()]
print(rows[-1][rows[0].index(name)] if len(rows) > 1 else 0)
PY
}
metric() { # metric NAME: a sample of the switch's /metrics (0 when absent)
  curl -sf "http://$L:18080/metrics" | awk -v n="$1" '$1 == n {print $2; f=1} END {if (!f) print 0}'
}
caller() { # caller SCENARIO PORT RATE CALLS CSV OUT
  timeout -s TERM $((DUR * 3 + 30)) \
  "${H_PIN[@]}" sipp -sf "$ROOT/loadtest/sipp/$1" $L:$2 -s 1000 -i $L -p 5080 -bind_local \
    -mi $L -mp 6100 -ci $L -cp 8891 -buff_size $SOCK_BUF -r "$3" -rp 1000 -m "$4" -l $(($3 * 5)) -nostdin \
    -default_behaviors all,-abortunexp -recv_timeout 10000 -timeout $((DUR * 3 + 20))s \
    -trace_stat -stf "$5" -fd 1 >"$6" 2>&1
}

printf '%-9s %6s %7s %7s %7s %8s %12s\n' system rate calls ok failed cpu_s cpu_s/1000
declare -A BEST PER1000
for R in "${RATES[@]}"; do
  for sys in waswitch kamailio; do
    if [ $sys = waswitch ]; then port=5062; pid=$WPID; else port=5064; pid=$KPID; fi
    M=$((R * DUR))
    c0=$(cpu_ticks "$pid")
    caller cps_uac.xml $port "$R" "$M" "$W/${sys}_$R.csv" "$W/${sys}_$R.out"
    sleep 1   # let the last BYEs and CDR writes finish inside the measured window
    c1=$(cpu_ticks "$pid")
    ok=$(counter 'SuccessfulCall(C)' "$W/${sys}_$R.csv")
    failed=$(counter 'FailedCall(C)' "$W/${sys}_$R.csv")
    cpu=$(python3 -c "print(f'{($c1-$c0)/$TCK:.2f}')")
    per=$(python3 -c "print(f'{1000*($c1-$c0)/$TCK/max($ok,1):.3f}')")
    printf '%-9s %6s %7s %7s %7s %8s %12s\n' $sys "$R" "$M" "$ok" "$failed" "$cpu" "$per"
    PER1000[$sys,$R]=$per
    if [ "$failed" = 0 ] && [ "$ok" = "$M" ]; then BEST[$sys]=$R; fi
    sleep 1
  done
done
echo
for sys in waswitch kamailio; do
  b="${BEST[$sys]:-none}"
  echo "$sys: highest rate with zero failed calls: $b cps" \
    "(CPU s per 1000 calls there: ${PER1000[$sys,$b]:-n/a})"
done
echo "CPU per call, waswitch / kamailio, by rate:"
RATIOS=()
for R in "${RATES[@]}"; do
  r=$(python3 -c "w,k=${PER1000[waswitch,$R]},${PER1000[kamailio,$R]}; print(f'{w/k if k else float(\"inf\"):.2f}')")
  echo "  $R cps: ${r}x"
  RATIOS+=("\"$R\": $r")
done

OV_JSON=""
if [ -n "$OVERLOAD" ]; then
  # A switch of its own for the overload run, limited to --max-cps.
  kill "$WPID" 2>/dev/null; wait "$WPID" 2>/dev/null
  switch_config "$W/overload.toml" "$MAX_CPS"
  sed -i "s|cps.db|overload.db|" "$W/overload.toml"
  start_switch "$W/overload.toml" "$W/overload.log"
  M=$((OVERLOAD * DUR))
  c0=$(cpu_ticks "$WPID")
  caller cps_uac_or_503.xml 5062 "$OVERLOAD" "$M" "$W/overload.csv" "$W/overload.out"
  for _ in $(seq 100); do [ "$(metric waswitch_calls_active)" = 0 ] && break; sleep 0.1; done
  sleep 2   # the CDR writer's last batch
  c1=$(cpu_ticks "$WPID")
  ok=$(counter 'SuccessfulCall(C)' "$W/overload.csv")
  failed=$(counter 'FailedCall(C)' "$W/overload.csv")
  refused=$(metric 'waswitch_calls_refused_total{reason="cps"}')
  active=$(metric waswitch_calls_active)
  answered=$(metric 'waswitch_calls_total{direction="sip_transit",outcome="answered"}')
  other=$(curl -sf "http://$L:18080/metrics" | awk '$1 ~ /^waswitch_calls_total\{/ && $1 !~ /outcome="answered"/ {s+=$2} END {print s+0}')
  echo
  echo "overload: $OVERLOAD cps offered for ${DUR} s to waswitch with limits.max_cps = $MAX_CPS"
  echo "  offered $M, completed $ok, refused with 503 + Retry-After $refused, failed $failed"
  echo "  after the run: live calls $active, CDRs answered $answered, other CDRs $other"
  echo "  CPU s: $(python3 -c "print(f'{($c1-$c0)/$TCK:.2f}')")"
  OV_JSON=", \"overload\": {\"rate\": $OVERLOAD, \"max_cps\": $MAX_CPS, \"offered\": $M, \"completed\": $ok, \"refused_503\": $refused, \"failed\": $failed, \"live_after\": $active, \"cdrs_answered\": $answered, \"cdrs_other\": $other}"
fi
echo "logs and SIPp statistics: $W"
W_PER=$(for R in "${RATES[@]}"; do printf '"%s": %s, ' "$R" "${PER1000[waswitch,$R]}"; done)
K_PER=$(for R in "${RATES[@]}"; do printf '"%s": %s, ' "$R" "${PER1000[kamailio,$R]}"; done)
RJ=$(IFS=,; echo "${RATIOS[*]}")
SUMMARY="{\"duration_s\": $DUR, \"waswitch_cpu_s_per_1000\": {${W_PER%, }}, \"kamailio_cpu_s_per_1000\": {${K_PER%, }}, \"ratio\": {$RJ}, \"waswitch_max_zero_fail_cps\": \"${BEST[waswitch]:-none}\", \"kamailio_max_zero_fail_cps\": \"${BEST[kamailio]:-none}\"$OV_JSON}"
# The plot (CPU per 1,000 calls against the rate, both systems) and report.md.
python3 - "$ROOT" "$W" "$SWITCH_CPUS" "$HARNESS_CPUS" "$SUMMARY" <<'PY'
import json, os, sys
root, w, switch_cpus, harness_cpus, summary = sys.argv[1:6]
sys.path.insert(0, os.path.join(root, "loadtest"))
import report
s = json.loads(summary)
rates = sorted(s["waswitch_cpu_s_per_1000"], key=float)
title = (f"sip-cps.sh: {s['duration_s']} s per rate, system under test on CPUs {switch_cpus}, "
         f"SIPp on {harness_cpus}")
plot = report.plot(f"{w}/sip-cps.png", title, "calls per second offered", [
    report.Series("waswitch (B2BUA, media anchored, CDRs)", [float(r) for r in rates],
                  [s["waswitch_cpu_s_per_1000"][r] for r in rates], "CPU s per 1,000 calls",
                  style="linespoints"),
    report.Series("Kamailio (stateful proxy)", [float(r) for r in rates],
                  [s["kamailio_cpu_s_per_1000"][r] for r in rates], "CPU s per 1,000 calls",
                  style="linespoints"),
])
rows = [{"calls/s": r, "waswitch CPU s / 1,000 calls": s["waswitch_cpu_s_per_1000"][r],
         "Kamailio CPU s / 1,000 calls": s["kamailio_cpu_s_per_1000"][r],
         "ratio": s["ratio"].get(r)} for r in rates]
notes = [f"highest rate with zero failed calls: waswitch {s['waswitch_max_zero_fail_cps']}, "
         f"Kamailio {s['kamailio_max_zero_fail_cps']}"]
if "overload" in s:
    notes.append(f"overload: `{json.dumps(s['overload'])}`")
report.write(f"{w}/report.md", f"SIP calls per second: {title}",
             {"duration_s": s["duration_s"], "rates": " ".join(rates),
              "switch_cpus": switch_cpus, "harness_cpus": harness_cpus}, rows, [plot], notes)
if plot:
    print(f"plot: {plot}")
print(f"report: {w}/report.md")
PY
echo "$SUMMARY"

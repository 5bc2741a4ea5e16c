#!/usr/bin/env bash
# Calls per second through waswitch (B2BUA) and through Kamailio (stateful proxy), in the
# same run, at rising rates. For each system and rate: calls, failures, CPU seconds used by
# the system under test, and CPU seconds per 1,000 calls; then the highest rate each
# carried with zero failed calls, and the CPU ratio waswitch / Kamailio.
#
#   loadtest/sip-cps.sh [DURATION_S] [RATE ...]        default: 10 s at 100 200 400 600 800
#
# Needs: sipp (Debian sip-tester), kamailio, a release build (cargo build --release; or set
# WASWITCH_BIN). Everything runs on 127.0.0.1; every SIPp run is bounded by -m and timeouts.
# Ports: waswitch SIP 5062/udp, HTTP 18080; Kamailio 5064/udp; callee 5071; caller 5080.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${WASWITCH_BIN:-$ROOT/target/release/waswitch}"
DUR="${1:-10}"; shift || true
RATES=("$@"); [ ${#RATES[@]} -eq 0 ] && RATES=(100 200 400 600 800)
W="$(mktemp -d /tmp/sip-cps.XXXXXX)"
L=127.0.0.1
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT

for tool in sipp kamailio; do
  command -v $tool >/dev/null || { echo "missing $tool (apt-get install sip-tester kamailio)"; exit 2; }
done
[ -x "$BIN" ] || { echo "no waswitch binary at $BIN (cargo build --release)"; exit 2; }

cat >"$W/waswitch.toml" <<TOML
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
[log]
level = "warn"
[limits]
max_cps = 100000
max_calls = 10000
[[trunk]]
name = "callee"
uri = "sip:$L:5071"
accept_from = ["$L"]
options_interval_secs = 0
[[route]]
name = "all"
trunks = ["callee"]
TOML

wait_udp() { for _ in $(seq 100); do ss -lun | grep -q "$L:$1 " && return 0; sleep 0.1; done; return 1; }

# The callee both systems send their calls to.
sipp -sf "$ROOT/loadtest/sipp/cps_uas.xml" -i $L -p 5071 -bind_local -mi $L -mp 6010 \
  -ci $L -cp 8892 -nostdin -timeout 3600s -default_behaviors all,-abortunexp \
  >"$W/uas.out" 2>&1 &
PIDS+=("$!")

"$BIN" run --config "$W/waswitch.toml" >"$W/waswitch.log" 2>&1 &
WPID=$!; PIDS+=("$WPID")
mkdir -p "$W/kam"
kamailio -f "$ROOT/loadtest/kamailio/proxy.cfg" -DD -E -Y "$W/kam" -w "$W/kam" \
  -A LISTEN=udp:$L:5064 -A DOWNSTREAM="\"sip:$L:5071\"" -A CHILDREN=2 -m 256 -M 16 \
  >"$W/kamailio.log" 2>&1 &
KPID=$!; PIDS+=("$KPID")
wait_udp 5062 || { echo "waswitch did not start"; tail "$W/waswitch.log"; exit 2; }
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

printf '%-9s %6s %7s %6s %7s %8s %12s\n' system rate calls ok failed cpu_s cpu_s/1000
declare -A BEST PER1000
for R in "${RATES[@]}"; do
  for sys in waswitch kamailio; do
    if [ $sys = waswitch ]; then port=5062; pid=$WPID; else port=5064; pid=$KPID; fi
    M=$((R * DUR))
    c0=$(cpu_ticks "$pid")
    timeout -s TERM $((DUR * 3 + 30)) \
    sipp -sf "$ROOT/loadtest/sipp/cps_uac.xml" $L:$port -s 1000 -i $L -p 5080 -bind_local \
      -mi $L -mp 6100 -ci $L -cp 8891 -r "$R" -rp 1000 -m "$M" -l $((R * 5)) -nostdin \
      -default_behaviors all,-abortunexp -recv_timeout 10000 -timeout $((DUR * 3 + 20))s \
      -trace_stat -stf "$W/${sys}_$R.csv" -fd 1 >"$W/${sys}_$R.out" 2>&1
    sleep 1   # let the last BYEs and CDR writes finish inside the measured window
    c1=$(cpu_ticks "$pid")
    ok=$(counter 'SuccessfulCall(C)' "$W/${sys}_$R.csv")
    failed=$(counter 'FailedCall(C)' "$W/${sys}_$R.csv")
    cpu=$(python3 -c "print(f'{($c1-$c0)/$TCK:.2f}')")
    per=$(python3 -c "print(f'{1000*($c1-$c0)/$TCK/max($ok,1):.3f}')")
    printf '%-9s %6s %7s %6s %7s %8s %12s\n' $sys "$R" "$M" "$ok" "$failed" "$cpu" "$per"
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
for R in "${RATES[@]}"; do
  python3 -c "w,k=${PER1000[waswitch,$R]},${PER1000[kamailio,$R]}; print(f'  {$R:>5} cps: {w/k if k else float(\"inf\"):.2f}x')"
done
echo "logs and SIPp statistics: $W"

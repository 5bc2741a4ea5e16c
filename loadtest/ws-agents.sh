#!/usr/bin/env bash
# What idle registered agents cost: AGENTS browser-phone stand-ins (loadtest/ws_agents.rs)
# hold SIP-over-WebSocket connections to the switch and re-register every INTERVAL_S
# seconds (digest each time) for SECONDS. The switch runs on core 0, the agents on core 1.
# Prints the switch's resident memory idle, with every agent registered, and per agent, and
# its CPU over the run (per agent-registration too).
#
#   loadtest/ws-agents.sh [AGENTS] [SECONDS] [INTERVAL_S]      default: 1000 180 60
#
# Needs a release build (the script builds the switch and the harness if missing) and
# taskset. Ports: HTTP 18080, SIP 15060. Bounded: the harness stops after SECONDS.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
AGENTS="${1:-1000}"; SECONDS_="${2:-180}"; INTERVAL="${3:-60}"
BIN="$ROOT/target/release/waswitch"
HARNESS="$ROOT/target/release/examples/ws-agents"
W="$(mktemp -d /tmp/ws-agents.XXXXXX)"
command -v taskset >/dev/null || { echo "missing taskset (util-linux)"; exit 2; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --bin waswitch) || exit 2
[ -x "$HARNESS" ] || (cd "$ROOT" && cargo build --release --example ws-agents) || exit 2
TICK=$(getconf CLK_TCK)

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

{
  printf '[node]\nid = "ws-agents"\n[http]\nlisten = "127.0.0.1:18080"\n'
  printf '[sip]\nlisten = "127.0.0.1:15060"\ntransports = ["udp"]\n'
  printf '[store]\nurl = "sqlite://%s/agents.db"\n' "$W"
  for i in $(seq 0 $((AGENTS - 1))); do
    printf '[[agent]]\nuser = "agent%d"\npassword = "pass%d"\n' "$i" "$i"
  done
} >"$W/agents.toml"

WASWITCH_LOG_LEVEL=warn taskset -c 0 "$BIN" run --config "$W/agents.toml" >"$W/switch.log" 2>&1 &
SW=$!; PIDS+=("$SW")
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/ready >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:18080/ready >/dev/null || { echo "the switch did not start"; cat "$W/switch.log"; exit 2; }
sleep 1
rss() { awk '/VmRSS/ {print $2}' "/proc/$SW/status"; }
cpu() { awk '{print $14 + $15}' "/proc/$SW/stat"; }
registered() { curl -sf http://127.0.0.1:18080/metrics | sed -n 's/^waswitch_agents_registered \([0-9.]*\)$/\1/p'; }
rss0=$(rss); cpu0=$(cpu)

taskset -c 1 "$HARNESS" 127.0.0.1:18080 "$AGENTS" "$SECONDS_" "$INTERVAL" >"$W/harness.txt" 2>&1 &
H=$!; PIDS+=("$H")
# Every agent registered (the first registrations spread over one interval).
for _ in $(seq $((INTERVAL * 10 + 300))); do
  [ "$(registered)" = "$AGENTS" ] && break; sleep 0.1
done
peak_registered=$(registered)
sleep 5
rss1=$(rss)
wait "$H"
cpu1=$(cpu); rss2=$(rss)
python3 - "$AGENTS" "$SECONDS_" "$INTERVAL" "$rss0" "$rss1" "$rss2" "$cpu0" "$cpu1" "$TICK" "${peak_registered:-0}" "$W/harness.txt" <<'PY'
import sys
n, secs, interval, rss0, rss1, rss2, cpu0, cpu1, tick, reg, harness = sys.argv[1:]
n, secs, interval = int(n), int(secs), int(interval)
rss0, rss1, rss2 = int(rss0), int(rss1), int(rss2)
cpu_s = (int(cpu1) - int(cpu0)) / int(tick)
print(open(harness).read().strip())
print(f"registered_at_once={reg} rss_idle_kib={rss0} rss_all_registered_kib={rss1} "
      f"rss_after_run_kib={rss2} rss_per_agent_kib={(rss1 - rss0) / max(n, 1):.1f}")
regs = n * max(secs // interval, 1)
print(f"switch_cpu_s={cpu_s:.2f} over {secs}s ({100 * cpu_s / secs:.2f}% of a core), "
      f"cpu_us_per_registration={1e6 * cpu_s / max(regs, 1):.0f}")
PY

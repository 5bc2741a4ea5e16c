#!/usr/bin/env bash
# A three-node cluster under load, one node killed with -9 mid-run and started again.
#
#   loadtest/cluster.sh [RATE] [DURATION_S] [KILL_AT_S] [RESTART_AT_S]   default: 20 120 40 70
#
# Three waswitch nodes (config/examples/cluster-node.toml) on 127.0.0.2, .3 and .4 share one
# PostgreSQL schema; Kamailio (ops/kamailio/waswitch.cfg) on 127.0.0.1:5060 spreads the PBX's
# calls over them; `waswitch sim` plays Meta on 127.0.0.1:8090 (its users grant permission,
# answer after 300 ms and hang up after CLUSTER_HOLD seconds) and sends every webhook to node 1,
# as a load balancer would to any node; SIPp is the PBX (loadtest/sipp/bic_uac_cluster.xml:
# business-initiated calls at RATE per second for DURATION_S, each to a customer of a pool
# that was granted permission first). Node 2 is killed with -9 at KILL_AT_S and started again
# at RESTART_AT_S.
#
# The report follows every call (SIPp's log of each call, the CDRs in PostgreSQL) and gives:
#   - offered, answered, completed and failed calls; failures split into the calls the killed
#     node had (they go with it) and failures on the surviving nodes (goal: 0);
#   - the gap: from the kill to the first answer of a call offered after it (goal <= 2 s),
#     and the slowest setup of a call offered within 5 s after the kill;
#   - CDRs per call (goal: exactly one), the killed node's calls marked node_lost, and how
#     long after the kill a survivor closed them out;
#   - `waswitch audit verify`, and the permission holds left (goal: none);
#   - the CDRs the CDR webhook (a receiver on 127.0.0.1:18070) got: every one, the killed
#     node's undelivered ones sent by a survivor;
#   - CPU seconds per 1,000 calls of the nodes, next to Kamailio's, with the nodes pinned to
#     CLUSTER_SWITCH_CPUS (default 1) and the harness (SIPp, the sim, Kamailio) to
#     CLUSTER_HARNESS_CPUS (default 0);
# and, as its last line, one JSON object of the figures. It exits 0 when every goal is met.
#
# Needs: a release build (built if missing), sipp (sip-tester), kamailio, psql, python3 and a
# PostgreSQL server (CLUSTER_PG_URL, default postgres://postgres@127.0.0.1:5432/test; the run
# works in schema waswitch_cluster_load, dropped and made again at the start). Everything is
# on loopback and bounded: SIPp stops after RATE x DURATION_S calls, every call within 45 s.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RATE="${1:-20}"; DURATION="${2:-120}"; KILL_AT="${3:-40}"; RESTART_AT="${4:-70}"
HOLD="${CLUSTER_HOLD:-3}"
CUSTOMERS="${CLUSTER_CUSTOMERS:-300}"
PG="${CLUSTER_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
SWITCH_CPUS="${CLUSTER_SWITCH_CPUS:-1}"
HARNESS_CPUS="${CLUSTER_HARNESS_CPUS:-0}"
SCHEMA=waswitch_cluster_load
NUMBER=15551112222
TOKEN=cluster-sim-token
BIN="$ROOT/target/release/waswitch"
W="$(mktemp -d /tmp/cluster-load.XXXXXX)"

for tool in sipp kamailio psql python3 taskset curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool"; exit 2; }
done
[ "$KILL_AT" -lt "$RESTART_AT" ] && [ "$RESTART_AT" -lt "$DURATION" ] ||
  { echo "want KILL_AT_S < RESTART_AT_S < DURATION_S"; exit 2; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --bin waswitch) || exit 2

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for n in 1 2 3; do [ -f "$W/node-$n.pid" ] && kill "$(cat "$W/node-$n.pid")" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT

PGOPTIONS="-c client_min_messages=warning" psql -q "$PG" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" -c "CREATE SCHEMA $SCHEMA" >/dev/null ||
  { echo "PostgreSQL at $PG cannot be reached"; exit 2; }
case "$PG" in *\?*) SEP='&' ;; *) SEP='?' ;; esac
STORE="$PG${SEP}options=-c%20search_path%3D$SCHEMA"
export WASWITCH_STORE_URL="$STORE"

ip_of() { echo "127.0.0.$(($1 + 1))"; }

# The nodes' configuration: the rehearsal's, with a CDR webhook to a receiver on 127.0.0.1:18070
# that records the call id of every CDR it is sent.
cp "$ROOT/config/examples/cluster-node.toml" "$W/node.toml"
printf '\n[cdr_webhook]\nurl = "http://127.0.0.1:18070/cdrs"\nsecret = "cluster-cdr-secret"\n' >>"$W/node.toml"
CONF="$W/node.toml"
taskset -c "$HARNESS_CPUS" python3 - "$W/hooked.txt" <<'PY' >"$W/hook.log" 2>&1 &
import http.server, json, sys, threading
out, lock = open(sys.argv[1], "a", buffering=1), threading.Lock()
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            call_id = json.loads(body).get("call_id", "?")
        except ValueError:
            call_id = "?"
        with lock:
            out.write(f"{call_id}\n")
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 18070), Hook).serve_forever()
PY
PIDS+=($!)

start_node() {
  local n=$1 ip
  ip=$(ip_of "$n")
  WASWITCH_NODE_ID="node-$n" WASWITCH_HTTP_LISTEN="$ip:8080" WASWITCH_SIP_LISTEN="$ip:5060" \
    WASWITCH_MEDIA_IP="$ip" WASWITCH_LOG_LEVEL=warn \
    taskset -c "$SWITCH_CPUS" "$BIN" run --config "$CONF" >>"$W/node-$n.log" 2>&1 &
  echo $! >"$W/node-$n.pid"
  for _ in $(seq 200); do curl -sf "http://$ip:8080/ready" >/dev/null && return 0; sleep 0.05; done
  echo "node $n did not start:"; tail -20 "$W/node-$n.log"; exit 2
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

for n in 1 2 3; do start_node "$n"; done

taskset -c "$HARNESS_CPUS" "$BIN" sim --config "$CONF" \
  --webhook-url "http://$(ip_of 1):8080/webhooks/meta" \
  --answer accept --ring-ms 300 --hold "$HOLD" --permission grant >"$W/sim.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8090/ && break; sleep 0.05; done

printf '1 sip:%s:5060\n' "$(ip_of 1)" "$(ip_of 2)" "$(ip_of 3)" >"$W/waswitch.list"
mkdir -p "$W/kamailio"
taskset -c "$HARNESS_CPUS" kamailio -f "$ROOT/ops/kamailio/waswitch.cfg" -DD -E \
  -Y "$W/kamailio" -w "$W/kamailio" -A LISTEN=udp:127.0.0.1:5060 \
  -A "DISPATCHER_LIST=\"$W/waswitch.list\"" -A CHILDREN=2 -m 64 -M 8 >"$W/kamailio.log" 2>&1 &
KAM=$!; PIDS+=("$KAM")

# The customers, each asked for permission once through node 1; every node must know each
# grant before the load starts.
echo "SEQUENTIAL" >"$W/customers.csv"
for i in $(seq "$CUSTOMERS"); do printf '49151%07d;\n' "$i" >>"$W/customers.csv"; done
tail -n +2 "$W/customers.csv" | tr -d ';' >"$W/customers.txt"
xargs -P 8 -I{} curl -s -o /dev/null -w '%{http_code}\n' -X POST \
  -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"purpose": "your order"}' \
  "http://$(ip_of 1):8080/v1/permissions/$NUMBER/{}/request" <"$W/customers.txt" >"$W/requests.txt"
asked=$(grep -c '^201$' "$W/requests.txt")
[ "$asked" -eq "$CUSTOMERS" ] || { echo "only $asked of $CUSTOMERS permission requests taken"; exit 2; }
granted() {
  local ip=$1 n=0
  while read -r c; do
    curl -s -H "authorization: Bearer $TOKEN" "http://$ip:8080/v1/permissions/$NUMBER/$c" |
      grep -q '"status":"granted"' && n=$((n + 1))
  done <"$W/customers.txt"
  echo "$n"
}
for _ in $(seq 30); do
  [ "$(granted "$(ip_of 3)")" -eq "$CUSTOMERS" ] && break
  sleep 1
done
[ "$(granted "$(ip_of 2)")" -eq "$CUSTOMERS" ] || { echo "the grants did not reach every node"; exit 2; }

# Kamailio has probed the three nodes up by now.
CALLS=$((RATE * DURATION))
echo "rate=$RATE/s duration=${DURATION}s calls=$CALLS hold=${HOLD}s kill node 2 at ${KILL_AT}s," \
  "restart at ${RESTART_AT}s; nodes on CPU $SWITCH_CPUS, harness on CPU $HARNESS_CPUS (results: $W)"
declare -A CPU0
for n in 1 2 3; do CPU0[$n]=$(cpu_ticks "$(cat "$W/node-$n.pid")"); done
KAM_CPU0=0; for p in $(pgrep -f "kamailio -f $ROOT/ops"); do KAM_CPU0=$((KAM_CPU0 + $(cpu_ticks "$p"))); done
START=$(date +%s.%N)
(cd "$W" && timeout $((DURATION + 120)) taskset -c "$HARNESS_CPUS" sipp \
  -sf "$ROOT/loadtest/sipp/bic_uac_cluster.xml" 127.0.0.1:5060 -i 127.0.0.1 -p 5090 \
  -mi 127.0.0.1 -inf "$W/customers.csv" -key biz "$NUMBER" -r "$RATE" -m "$CALLS" -l 5000 \
  -timeout $((DURATION + 100))s -timeout_error -nostdin -trace_logs -trace_stat -fd 1 \
  -stf "$W/sipp.csv" -trace_err -error_file "$W/sipp.err" >"$W/sipp.out" 2>&1) &
SIPP=$!

sleep "$KILL_AT"
KILLED_PID=$(cat "$W/node-2.pid")
CPU_KILLED=$(cpu_ticks "$KILLED_PID")
kill -9 "$KILLED_PID"; wait "$KILLED_PID" 2>/dev/null
KILLED=$(date +%s.%N)
echo "node 2 killed at $(python3 -c "print(round($KILLED - $START, 1))") s"
sleep $((RESTART_AT - KILL_AT))
start_node 2
RESTARTED=$(date +%s.%N)
echo "node 2 ready again at $(python3 -c "print(round($RESTARTED - $START, 1))") s"
wait "$SIPP"; SIPP_EXIT=$?

# Every call over on the live nodes, their CDRs written.
for _ in $(seq 60); do
  busy=0
  for n in 1 2 3; do
    a=$(curl -sf "http://$(ip_of "$n"):8080/metrics" | sed -n 's/^waswitch_calls_active \([0-9.]*\)$/\1/p')
    [ "${a:-0}" = 0 ] || busy=1
  done
  [ "$busy" = 0 ] && break
  sleep 1
done
for _ in $(seq 30); do
  backlog=$(psql -q "$STORE" -A -t -c "SELECT COUNT(*) FROM cdr_webhook_outbox WHERE gave_up_at IS NULL")
  [ "$backlog" = 0 ] && break
  sleep 1
done
sleep 1
declare -A CPU1
for n in 1 3; do CPU1[$n]=$(cpu_ticks "$(cat "$W/node-$n.pid")"); done
CPU1[2]=$(cpu_ticks "$(cat "$W/node-2.pid")")
KAM_CPU1=0; for p in $(pgrep -f "kamailio -f $ROOT/ops"); do KAM_CPU1=$((KAM_CPU1 + $(cpu_ticks "$p"))); done
NODES_CPU=$(( (CPU1[1] - CPU0[1]) + (CPU_KILLED - CPU0[2]) + CPU1[2] + (CPU1[3] - CPU0[3]) ))

psql -q "$STORE" -A -F, -t -c "SELECT call_id, node_id, COALESCE(sip_call_id, ''), outcome,
  end_cause, offered_at, COALESCE(answered_at, 0), ended_at FROM cdrs
  WHERE direction = 'business_initiated'" >"$W/cdrs.csv"
WASWITCH_STORE_URL="$STORE" "$BIN" audit verify --config "$CONF" >"$W/audit.txt" 2>&1
AUDIT_EXIT=$?
HELD=0
for n in 1 2 3; do
  while read -r c; do
    h=$(curl -s -H "authorization: Bearer $TOKEN" "http://$(ip_of "$n"):8080/v1/permissions/$NUMBER/$c" |
      sed -n 's/.*"calls_in_progress":\([0-9]*\).*/\1/p')
    HELD=$((HELD + ${h:-0}))
  done <"$W/customers.txt"
done
LOST_METRIC=0
for n in 1 3; do
  v=$(curl -sf "http://$(ip_of "$n"):8080/metrics" | sed -n 's/^waswitch_cluster_nodes_lost_total \([0-9.]*\)$/\1/p')
  LOST_METRIC=$(python3 -c "print(int($LOST_METRIC + float('${v:-0}')))")
done
curl -sf "http://$(ip_of 1):8080/metrics" | grep '^waswitch_meta_webhook_forwarded_total' >"$W/forwarded.txt"

python3 - "$W" "$START" "$KILLED" "$RESTARTED" "$CALLS" "$RATE" "$DURATION" "$HOLD" \
  "$SIPP_EXIT" "$AUDIT_EXIT" "$HELD" "$LOST_METRIC" "$NODES_CPU" "$((KAM_CPU1 - KAM_CPU0))" \
  "$(getconf CLK_TCK)" <<'PY'
import csv, glob, json, statistics, sys
(w, start, killed, restarted, calls, rate, duration, hold, sipp_exit, audit_exit, held,
 lost_metric, nodes_cpu, kam_cpu, tick) = sys.argv[1:]
start, killed, restarted = float(start), float(killed), float(restarted)
held, tick = int(held), int(tick)

offered, answered, completed = {}, {}, set()
for path in glob.glob(f"{w}/*_logs.log"):
    for line in open(path, errors="replace"):
        f = line.split()
        if len(f) >= 5 and f[0] == "offered":
            offered[f[1]] = float(f[3]) + float(f[4]) / 1e6
        elif len(f) >= 7 and f[0] == "answered":
            answered[f[1]] = (float(f[3]) + float(f[4]) / 1e6, float(f[5]) + float(f[6]) / 1e6)
        elif len(f) >= 2 and f[0] == "completed":
            completed.add(f[1])
stats = [r for r in csv.reader(open(f"{w}/sipp.csv"), delimiter=";") if len(r) > 3]
head, last = stats[0], stats[-1]
col = lambda name: int(last[head.index(name)])
created, ok, failed = col("TotalCallCreated"), col("SuccessfulCall(C)"), col("FailedCall(C)")

cdrs = {}
for row in csv.reader(open(f"{w}/cdrs.csv")):
    if len(row) < 8:
        continue
    cdrs.setdefault(row[2], []).append(
        {"call_id": row[0], "node": row[1], "outcome": row[3], "cause": row[4],
         "offered": int(row[5]) / 1e3, "answered": int(row[6]) / 1e3, "ended": int(row[7]) / 1e3})
all_cdrs = [c for cs in cdrs.values() for c in cs]
node_lost = [c for c in all_cdrs if c["cause"] == "node_lost"]
several = sum(1 for sip_id in offered if len(cdrs.get(sip_id, [])) > 1)
strays = sum(1 for sip_id in cdrs if sip_id not in offered)

# A failed call went with the killed node when its CDR says node_lost, or when it has no CDR
# and was offered in the 2 s before the kill (its INVITE reached node 2, which died before it
# registered the call). Every other failure happened on a surviving node.
with_node, without_cdr, on_survivors, missing = [], [], [], []
for sip_id, t0 in offered.items():
    cs = cdrs.get(sip_id, [])
    if sip_id in completed:
        if not cs:
            missing.append(sip_id)
        continue
    if any(c["cause"] == "node_lost" for c in cs):
        with_node.append(sip_id)
    elif not cs and killed - 2 <= t0 <= killed:
        without_cdr.append(sip_id)
    else:
        on_survivors.append(sip_id)
closed_after = max((c["ended"] - killed for c in node_lost), default=None)

after = [(t0, t1) for (t0, t1) in answered.values() if t0 >= killed]
first_after = min((t1 for _, t1 in after), default=None)
gap = None if first_after is None else first_after - killed
window = [t1 - t0 for (t0, t1) in after if t0 < killed + 5]
setups = sorted(t1 - t0 for (t0, t1) in answered.values())
pct = lambda p: setups[min(len(setups) - 1, int(p * len(setups)))] * 1000 if setups else 0
audit = open(f"{w}/audit.txt").read().strip()
hooked = [l.strip() for l in open(f"{w}/hooked.txt")]
cdr_ids = {c["call_id"] for c in all_cdrs}
hooked_once = set(hooked) & cdr_ids
hooked_twice = len(hooked) - len(set(hooked))
cpu_nodes = int(nodes_cpu) / tick
cpu_kam = int(kam_cpu) / tick
gap_text = "no call answered after it" if gap is None else f"{gap * 1000:.0f} ms"
closed_text = "-" if closed_after is None else f"{closed_after:.1f} s"
all_node_2 = all(c["node"] == "node-2" for c in node_lost)

print(f"calls: offered={created} answered={len(answered)} completed={ok} failed={failed}")
print(f"  failed with the killed node: {len(with_node)} with a node_lost CDR, "
      f"{len(without_cdr)} whose INVITE died with it (no CDR)")
print(f"  failed on the surviving nodes: {len(on_survivors)} {sorted(on_survivors)[:5]}")
print(f"gap: first answer of a call offered after the kill: {gap_text}; slowest setup of a "
      f"call offered within 5 s after it: {max(window, default=0) * 1000:.0f} ms")
print(f"setup (INVITE to 200, through Kamailio): p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms")
print(f"CDRs: {len(all_cdrs)} for {len(offered)} calls; calls with more than one: {several}; "
      f"completed calls without one: {len(missing)}; CDRs of no offered call: {strays}")
print(f"node_lost: {len(node_lost)} CDRs (all of node-2: {all_node_2}), the last written "
      f"{closed_text} after the kill; nodes taken for lost (metric): {lost_metric}")
print(f"CDR webhook: {len(hooked_once)} of {len(cdr_ids)} CDRs delivered, "
      f"{hooked_twice} delivered more than once")
print(f"audit: {audit}")
print(f"permission holds left: {held}")
print(f"CPU: nodes {cpu_nodes:.1f} s ({1000 * cpu_nodes / max(created, 1):.2f} s per 1,000 "
      f"calls, 3 nodes on one core); Kamailio {cpu_kam:.1f} s "
      f"({1000 * cpu_kam / max(created, 1):.2f} s per 1,000 calls)")
goals = {
    "every_call_offered": created == int(calls) and len(offered) == created,
    "failed_on_survivors": not on_survivors,
    "gap_le_2s": gap is not None and gap <= 2.0,
    "one_cdr_per_call": several == 0 and not missing and strays == 0,
    "node_lost_marked": bool(node_lost) and all_node_2,
    "audit_intact": audit_exit == "0",
    "no_holds_left": held == 0,
    "every_cdr_webhooked": hooked_once == cdr_ids,
}
print("goals: " + ", ".join(f"{k}={'ok' if v else 'MISSED'}" for k, v in goals.items()))
print(json.dumps({
    "rate": int(rate), "duration_s": int(duration), "hold_s": float(hold),
    "offered": created, "answered": len(answered), "completed": ok, "failed": failed,
    "failed_with_killed_node": len(with_node) + len(without_cdr),
    "failed_on_survivors": len(on_survivors),
    "gap_ms": None if gap is None else round(gap * 1000),
    "slowest_setup_after_kill_ms": round(max(window, default=0) * 1000),
    "setup_p50_ms": round(pct(0.5)), "setup_p99_ms": round(pct(0.99)),
    "cdrs": len(all_cdrs), "calls_with_several_cdrs": several, "node_lost": len(node_lost),
    "closed_out_after_s": None if closed_after is None else round(closed_after, 1),
    "audit_intact": audit_exit == "0", "holds_left": held,
    "cdrs_webhooked": len(hooked_once), "cdrs_webhooked_twice": hooked_twice,
    "nodes_cpu_s_per_1000_calls": round(1000 * cpu_nodes / max(created, 1), 2),
    "kamailio_cpu_s_per_1000_calls": round(1000 * cpu_kam / max(created, 1), 2),
    "goals_met": all(goals.values()),
}))
sys.exit(0 if all(goals.values()) else 1)
PY

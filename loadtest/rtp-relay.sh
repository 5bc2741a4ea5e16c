#!/usr/bin/env bash
# RTP relay load: N concurrent calls of 20 ms G.711 both ways through waswitch's media
# shards and, in the same run and with the same streams, through rtpengine in userspace
# mode. Prints, for each: packets per second relayed, CPU seconds per million packets,
# latency p50/p99, loss, RSS per call; plots (gnuplot: CPU per million packets, latency) and
# report.md in the results directory.
#
#   loadtest/rtp-relay.sh [CALLS] [SECONDS] [SHARDS]      default: 2000 20 (shards: cores)
#
# Needs rtpengine (Debian rtpengine-daemon) and a release build of the generator
# (cargo build --release --example rtp-load; the script builds it if missing). Everything is
# on 127.0.0.1: rtpengine NG on 2223, its media on 10000-19999; waswitch's on 20000 and up.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CALLS="${1:-2000}"; SECONDS_="${2:-20}"; SHARDS="${3:-$(nproc)}"
GEN="$ROOT/target/release/examples/rtp-load"
W="$(mktemp -d /tmp/rtp-relay.XXXXXX)"
command -v rtpengine >/dev/null || { echo "missing rtpengine (apt-get install rtpengine-daemon)"; exit 2; }
[ -x "$GEN" ] || (cd "$ROOT" && cargo build --release --example rtp-load) || exit 2

RPID=""
cleanup() { [ -n "$RPID" ] && kill "$RPID" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT

# rtpengine: userspace forwarding only (no kernel module), no config file, one thread per core.
rtpengine --config-file=none --table=-1 --interface=127.0.0.1 \
  --listen-ng=127.0.0.1:2223 --port-min=10000 --port-max=19999 --delete-delay=0 \
  --timeout=3600 --num-threads="$SHARDS" --foreground --log-stderr --log-level=4 \
  --pidfile="$W/rtpengine.pid" >"$W/rtpengine.log" 2>&1 &
RPID=$!
for _ in $(seq 50); do ss -lun | grep -q "127.0.0.1:2223 " && break; sleep 0.1; done
ss -lun | grep -q "127.0.0.1:2223 " || { echo "rtpengine did not start"; cat "$W/rtpengine.log"; exit 2; }

echo "calls=$CALLS seconds=$SECONDS_ threads/shards=$SHARDS (2 directions x 50 packets/s per call)"
printf '%-10s %9s %10s %12s %8s %8s %8s %12s\n' relay pps loss loss% cpu_s/Mpkt p50_us p99_us rss_KiB/call
for mode in waswitch rtpengine; do
  if [ $mode = waswitch ]; then
    line=$(timeout $((SECONDS_ + 120)) "$GEN" waswitch "$CALLS" "$SECONDS_" "$SHARDS")
  else
    line=$(timeout $((SECONDS_ + 120)) "$GEN" rtpengine "$CALLS" "$SECONDS_" 127.0.0.1:2223 "$RPID")
  fi
  echo "$line" >"$W/$mode.txt"
  get() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$line"; }
  printf '%-10s %9s %10s %12s %8s %8s %8s %12s\n' $mode "$(get pps)" "$(get loss)" \
    "$(get loss_pct)" "$(get cpu_s_per_mpkt)" "$(get p50_us)" "$(get p99_us)" "$(get rss_kib_per_call)"
done
python3 - "$W" "$ROOT" "$CALLS" "$SECONDS_" "$SHARDS" <<'PY'
import os, sys
w_dir, root, calls, seconds, shards = sys.argv[1:6]
sys.path.insert(0, os.path.join(root, "loadtest"))
import report
def kv(p): return dict(x.split("=", 1) for x in open(p).read().split())
w, r = kv(f"{w_dir}/waswitch.txt"), kv(f"{w_dir}/rtpengine.txt")
print(f"CPU per packet, waswitch / rtpengine: {float(w['cpu_s_per_mpkt'])/max(float(r['cpu_s_per_mpkt']),1e-9):.2f}x")
# Plots: CPU per million packets, and the latency each relay adds, side by side.
title = f"rtp-relay.sh: {calls} calls of G.711 both ways for {seconds} s, threads per relay: {shards}"
relays = [(0, "waswitch"), (1, "rtpengine")]
num = lambda d, k: float(d.get(k, "nan"))
plots = [
    report.plot(f"{w_dir}/rtp-relay-cpu.png", title, "relay", [
        report.Series("CPU per million packets", [0, 1],
                      [num(w, "cpu_s_per_mpkt"), num(r, "cpu_s_per_mpkt")], "CPU s", style="boxes"),
    ], xtics=relays),
    report.plot(f"{w_dir}/rtp-relay-latency.png", title, "relay", [
        report.Series("latency p50", [-0.2, 0.8], [num(w, "p50_us"), num(r, "p50_us")], "µs",
                      style="boxes"),
        report.Series("latency p99", [0.2, 1.2], [num(w, "p99_us"), num(r, "p99_us")], "µs",
                      style="boxes"),
    ], xtics=relays),
]
keys = ["pps", "loss", "loss_pct", "cpu_s_per_mpkt", "p50_us", "p99_us", "rss_kib_per_call"]
rows = [dict(relay=name, **{k: d.get(k, "") for k in keys}) for name, d in (("waswitch", w), ("rtpengine", r))]
report.write(f"{w_dir}/report.md", f"RTP relay: {title}",
             {"calls": calls, "seconds": seconds, "threads": shards}, rows, plots,
             [f"CPU per packet, waswitch / rtpengine: "
              f"{num(w, 'cpu_s_per_mpkt') / max(num(r, 'cpu_s_per_mpkt'), 1e-9):.2f}x"])
for p in plots:
    if p:
        print(f"plot: {p}")
print(f"report: {w_dir}/report.md")
PY
echo "results: $W"

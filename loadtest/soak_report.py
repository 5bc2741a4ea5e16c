"""The figures, plots and report.md of a soak run (loadtest/soak.sh), from its samples.

    python3 loadtest/soak_report.py WORKDIR ROOT START END "k=v k=v ..."

Exits 1 when a call failed or the RSS slope per call served is above max_slope_kib.
"""

import json
import os
import sys

work, root, start, end, params = (sys.argv[1], sys.argv[2], float(sys.argv[3]),
                                  float(sys.argv[4]), sys.argv[5])
sys.path.insert(0, os.path.join(root, "loadtest"))
import report  # noqa: E402

params = dict(kv.split("=", 1) for kv in params.split() if "=" in kv)
tick = os.sysconf("SC_CLK_TCK")
warmup, max_slope = float(params["warmup_s"]), float(params["max_slope_kib"])


def parse(line):
    parts = line.split()
    if len(parts) < 4:
        return None
    s = {"t": float(parts[0]), "cpu": float(parts[1]) / tick, "rss": float(parts[2]),
         "fds": float(parts[3]), "m": {}}
    for kv in parts[4:]:
        name, _, value = kv.rpartition("=")
        try:
            s["m"][name] = float(value)
        except ValueError:
            pass
    return s


def load(path):
    try:
        return [s for s in map(parse, open(path)) if s]
    except OSError:
        return []


def total(s, prefix, where=lambda labels: True):
    return sum(v for k, v in s["m"].items()
               if (k == prefix or k.startswith(prefix + "{")) and where(k[len(prefix):]))


def served(s):
    return total(s, "waswitch_calls_total")


def failed(s):
    return (total(s, "waswitch_calls_total", lambda l: 'outcome="answered"' not in l)
            + total(s, "waswitch_calls_refused_total"))


samples, idle, after = load(f"{work}/samples.txt"), load(f"{work}/idle.txt"), load(f"{work}/after.txt")
if not samples:
    print("no samples: the switch did not run (see switch.log)")
    sys.exit(2)
load_window = [s for s in samples if start <= s["t"] <= end]
steady = [s for s in load_window if s["t"] - start >= warmup]


def fit(xs, ys):
    """Least squares: (slope, intercept)."""
    n = len(xs)
    if n < 2:
        return 0.0, ys[0] if ys else 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


# RSS (KiB) against calls served, and against time, over the steady part.
slope_kib, icpt = fit([served(s) for s in steady], [s["rss"] for s in steady])
slope_time, _ = fit([s["t"] for s in steady], [s["rss"] for s in steady])
calls_steady = served(steady[-1]) - served(steady[0]) if len(steady) > 1 else 0

# The harness's own reports.
try:
    sim = json.load(open(f"{work}/sim.json"))
except (OSError, ValueError):
    sim = None
caller = {}
try:
    rows = [line.rstrip("\n").split(";") for line in open(f"{work}/caller.csv") if line.strip()]
    if len(rows) > 1:
        caller = dict(zip(rows[0], rows[-1]))
except OSError:
    pass


def caller_count(name):
    try:
        return int(caller.get(name, 0))
    except ValueError:
        return 0


first, last = (load_window[0], load_window[-1]) if load_window else (samples[0], samples[-1])
call_s = sum(b["m"].get("waswitch_calls_active", 0) * (b["t"] - a["t"])
             for a, b in zip(load_window, load_window[1:]))
cpu_s = last["cpu"] - first["cpu"]
rtp_in = total(last, "waswitch_rtp_packets_total", lambda l: 'direction="in"' in l) - \
    total(first, "waswitch_rtp_packets_total", lambda l: 'direction="in"' in l)
dropped = total(last, "waswitch_rtp_dropped_total") - total(first, "waswitch_rtp_dropped_total")
end_state = after[-1] if after else samples[-1]
switch_failed = failed(end_state) - (failed(idle[0]) if idle else 0)
sim_failed = sim["failed"] if sim else 0
sim_loss = 100 * (1 - sim["packets_in"] / max(sim["packets_out"], 1)) if sim else None
caller_failed = caller_count("FailedCall(C)")
all_failed = switch_failed + sim_failed + caller_failed
rss_idle = idle[0]["rss"] if idle else samples[0]["rss"]
rss_peak = max(s["rss"] for s in samples)
rss_after = end_state["rss"]
fds = [s["fds"] for s in load_window] or [0]
tables = sorted({k for s in samples for k in s["m"] if k.startswith("waswitch_state_entries{")})
slope_bytes = 1024 * slope_kib
passed = all_failed == 0 and slope_kib <= max_slope and len(steady) >= 2

summary = {
    "rss_slope_bytes_per_call": round(slope_bytes, 1),
    "rss_slope_kib_per_hour": round(3600 * slope_time, 1),
    "calls_served": int(served(end_state) - (served(idle[0]) if idle else 0)),
    "calls_in_slope": int(calls_steady),
    "failed": int(all_failed),
    "switch_failed": int(switch_failed), "sim_failed": int(sim_failed),
    "sipp_failed": caller_failed,
    "uic_offered": sim["attempts"] if sim else 0,
    "uic_audio_verified": sim["audio_verified"] if sim else 0,
    "sip_offered": caller_count("TotalCallCreated"),
    "uic_echo_loss_pct": round(sim_loss, 4) if sim_loss is not None else None,
    "switch_drop_pct": round(100 * dropped / max(rtp_in, 1), 4),
    "cpu_ms_per_call_second": round(1000 * cpu_s / max(call_s, 1), 3),
    "rss_idle_kib": int(rss_idle), "rss_peak_kib": int(rss_peak), "rss_after_kib": int(rss_after),
    "fds_min": int(min(fds)), "fds_max": int(max(fds)),
    "fds_after": int(end_state["fds"]),
    "threads_max": int(max((s["m"].get("waswitch_process_threads", 0) for s in samples), default=0)),
    "threads_after": int(end_state["m"].get("waswitch_process_threads", 0)),
    "passed": passed,
}
for k in tables:
    summary["entries_after_" + k.split('table="')[1].split('"')[0]] = int(end_state["m"].get(k, 0))

print(f"calls served: {summary['calls_served']} (user-initiated offered {summary['uic_offered']}, "
      f"audio verified {summary['uic_audio_verified']}; SIP transit offered {summary['sip_offered']})")
print(f"failed: {all_failed} (switch {switch_failed:.0f}, sim {sim_failed}, SIPp caller {caller_failed})")
print(f"loss: user-initiated echo {summary['uic_echo_loss_pct']} %, dropped by the switch "
      f"{summary['switch_drop_pct']} %")
print(f"switch CPU: {cpu_s:.1f} s over {call_s:.0f} call-seconds = "
      f"{summary['cpu_ms_per_call_second']} ms per call-second")
print(f"RSS: idle {rss_idle / 1024:.1f} MiB, peak {rss_peak / 1024:.1f} MiB, "
      f"after the load {rss_after / 1024:.1f} MiB")
print(f"RSS slope after {warmup:.0f} s of warm-up: {slope_bytes:.1f} bytes per call served over "
      f"{calls_steady:.0f} calls ({3600 * slope_time:.0f} KiB per hour); threshold "
      f"{max_slope} KiB per call")
print(f"open fds during the load: {min(fds):.0f}-{max(fds):.0f}, after: {end_state['fds']:.0f}")
for k in tables:
    print(f"{k}: peak {max(s['m'].get(k, 0) for s in samples):.0f}, after {end_state['m'].get(k, 0):.0f}")

# Plots.
t0 = samples[0]["t"]
xs = [s["t"] - t0 for s in samples]
run = (f"{params['duration_s']} s at {params['share_pct']} % of capacity "
       f"({params['uic_calls']} WhatsApp + {params['sip_calls']} SIP-transit calls, "
       f"hold {params['hold_s']} s, switch CPU {params['switch_cpus']})")
plots = [
    report.plot(f"{work}/soak-memory.png", f"soak.sh: the switch's memory\n{run}",
                "time since the switch started (s)", [
                    report.Series("switch resident memory", xs, [s["rss"] / 1024 for s in samples], "MiB"),
                    report.Series("calls served", xs, [served(s) for s in samples], "calls", right=True),
                ]),
    report.plot(f"{work}/soak-calls.png", f"soak.sh: calls and the switch's CPU\n{run}",
                "time since the switch started (s)", [
                    report.Series("concurrent calls", xs,
                                  [s["m"].get("waswitch_calls_active", 0) for s in samples], "calls"),
                    report.Series("switch CPU", xs[1:],
                                  [100 * (b["cpu"] - a["cpu"]) / max(b["t"] - a["t"], 1e-9)
                                   for a, b in zip(samples, samples[1:])], "% of one core", right=True),
                ]),
]
if steady:
    cs = [served(s) for s in steady]
    plots.append(report.plot(
        f"{work}/soak-rss-per-call.png",
        f"soak.sh: RSS against calls served after the warm-up, slope {slope_bytes:.0f} bytes per call\n{run}",
        "calls served", [
            report.Series("switch resident memory, sampled", cs, [s["rss"] / 1024 for s in steady], "MiB",
                          style="points pt 7 ps 0.5"),
            report.Series("least-squares fit", cs, [(icpt + slope_kib * c) / 1024 for c in cs], "MiB"),
        ], yzero=False))
if tables:
    plots.append(report.plot(
        f"{work}/soak-tables.png", f"soak.sh: entries of the long-lived tables\n{run}",
        "time since the switch started (s)", [
            report.Series(k.split('table="')[1].split('"')[0], xs,
                          [s["m"].get(k, 0) for s in samples], "entries")
            for k in tables]))

table = [
    {"figure": "calls served", "value": summary["calls_served"]},
    {"figure": "failed calls", "value": all_failed},
    {"figure": "user-initiated: offered / audio verified",
     "value": f"{summary['uic_offered']} / {summary['uic_audio_verified']}"},
    {"figure": "SIP transit offered", "value": summary["sip_offered"]},
    {"figure": "echo loss (user-initiated) / dropped by the switch",
     "value": f"{summary['uic_echo_loss_pct']} % / {summary['switch_drop_pct']} %"},
    {"figure": "switch CPU per call-second", "value": f"{summary['cpu_ms_per_call_second']} ms"},
    {"figure": "RSS idle / peak / 60 s after the load",
     "value": f"{rss_idle / 1024:.1f} / {rss_peak / 1024:.1f} / {rss_after / 1024:.1f} MiB"},
    {"figure": f"RSS slope per call served (after {warmup:.0f} s)",
     "value": f"{slope_bytes:.1f} bytes (threshold {max_slope} KiB)"},
    {"figure": "RSS slope per hour (after the warm-up)", "value": f"{3600 * slope_time:.0f} KiB"},
    {"figure": "open fds during the load / after", "value": f"{min(fds):.0f}-{max(fds):.0f} / {end_state['fds']:.0f}"},
    {"figure": "threads, most / after", "value": f"{summary['threads_max']} / {summary['threads_after']}"},
] + [{"figure": f"{k} peak / after",
      "value": f"{max(s['m'].get(k, 0) for s in samples):.0f} / {end_state['m'].get(k, 0):.0f}"}
     for k in tables]
report.write(f"{work}/report.md", f"Soak: {run}", params, table, plots,
             [f"verdict: {'passed' if passed else 'FAILED'}", f"summary: `{json.dumps(summary)}`"])
for p in plots:
    if p:
        print(f"plot: {p}")
print(f"report: {work}/report.md")
print(json.dumps(summary))
sys.exit(0 if passed else 1)

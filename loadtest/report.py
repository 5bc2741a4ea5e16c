"""Plots and reports of the load scripts (uic.sh, sip-cps.sh, rtp-relay.sh): PNG plots drawn
by gnuplot (Debian package gnuplot-nox) with a title naming the run, axes with units and a
legend, and a report.md beside them holding the run's parameters, its figures and its plots.

    import report
    report.plot("run.png", "uic.sh transcoded, 20 calls/s, 10 s hold", "time (s)",
                [report.Series("concurrent calls", xs, calls, "calls"),
                 report.Series("switch CPU", xs, cpu, "% of one core", right=True)])
    report.write("report.md", "User-initiated calls", params, rows, ["run.png"])
"""

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field


@dataclass
class Series:
    """One line of a plot: its legend, points, and the unit of its axis (left, or right)."""

    label: str
    xs: list
    ys: list
    unit: str
    right: bool = False
    style: str = "lines"
    extra: dict = field(default_factory=dict)


def _quote(text):
    # A line break in a title becomes gnuplot's \n inside a double-quoted string.
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def plot(png, title, xlabel, series, width=1000, height=480, logy=False, xtics=None,
         yzero=True):
    """Draws `series` into `png`: one or two y axes (by the series' units), a legend, the
    title (a line break in it starts a second line); `xtics` names x positions
    ([(x, label)]: categories, for bars); `yzero=False` fits the left axis to the data
    instead of starting it at 0 (a small change on a large value). Returns the path, or
    None (with a note) when gnuplot is missing."""
    gnuplot = shutil.which("gnuplot")
    if gnuplot is None:
        print("note: gnuplot missing (apt-get install gnuplot-nox): no plot drawn", flush=True)
        return None
    series = [s for s in series if s.xs]
    if not series:
        return None
    left = next((s.unit for s in series if not s.right), "")
    right = next((s.unit for s in series if s.right), None)
    work = tempfile.mkdtemp(prefix="plot.")
    lines = [
        f"set terminal pngcairo size {width},{height} font 'sans,10'" if _cairo(gnuplot)
        else f"set terminal png size {width},{height}",
        f"set output {_quote(png)}",
        f"set title {_quote(title)} noenhanced",
        f"set xlabel {_quote(xlabel)} noenhanced",
        f"set ylabel {_quote(left)} noenhanced",
        "set grid",
        "set key outside bottom center horizontal noenhanced",
        "set yrange [0:*]" if yzero else "set yrange [*:*]",
        "set offsets graph 0.02, graph 0.02, 0, 0",
    ]
    if logy:
        lines += ["set logscale y", "set yrange [*:*]"]
    if xtics:
        ticks = ", ".join(f"{_quote(label)} {x}" for x, label in xtics)
        lines += [f"set xtics ({ticks})", "set xrange [-0.75:" + str(len(xtics) - 0.25) + "]",
                  "set boxwidth 0.35", "set style fill solid 0.6"]
    if right:
        lines += [
            f"set y2label {_quote(right)} noenhanced",
            "set y2tics",
            "set ytics nomirror",
            "set y2range [0:*]",
        ]
    plots = []
    for i, s in enumerate(series):
        data = os.path.join(work, f"s{i}.tsv")
        with open(data, "w") as f:
            for x, y in zip(s.xs, s.ys):
                if y is not None:
                    f.write(f"{x}\t{y}\n")
        axes = "x1y2" if s.right else "x1y1"
        plots.append(f"{_quote(data)} using 1:2 axes {axes} with {s.style} lw 2 "
                     f"title {_quote(s.label + ' (' + s.unit + ')')}")
    lines.append("plot " + ", \\\n     ".join(plots))
    script = os.path.join(work, "plot.gp")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    done = subprocess.run([gnuplot, script], capture_output=True, text=True)
    shutil.rmtree(work, ignore_errors=True)
    if done.returncode != 0:
        print(f"note: gnuplot failed: {done.stderr.strip()}", flush=True)
        return None
    return png


_CAIRO = {}


def _cairo(gnuplot):
    """Whether this gnuplot has the cairo PNG terminal (antialiased; gnuplot-nox has it)."""
    if gnuplot not in _CAIRO:
        out = subprocess.run([gnuplot, "-e", "set terminal"], capture_output=True, text=True)
        _CAIRO[gnuplot] = "pngcairo" in (out.stdout + out.stderr)
    return _CAIRO[gnuplot]


def write(path, title, params, rows, plots, notes=()):
    """Writes report.md: the run's parameters, its figures (a table of rows, each a dict of
    the same keys), the plots (paths beside the report), and notes."""
    out = [f"# {title}", "", "## Parameters", ""]
    out += [f"- {k}: `{v}`" for k, v in params.items()]
    if rows:
        keys = list(rows[0].keys())
        out += ["", "## Figures", "", "| " + " | ".join(keys) + " |",
                "|" + "---|" * len(keys)]
        out += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    shown = [p for p in plots if p]
    if shown:
        out += ["", "## Plots", ""]
        out += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in shown]
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path


def quantile(cum, q):
    """The q quantile of a histogram given as sorted (upper bound, cumulative count) pairs:
    linear within the bucket holding the q-th sample (as Prometheus' histogram_quantile);
    None when it holds nothing."""
    total = cum[-1][1] if cum else 0
    if total <= 0:
        return None
    rank, lo, below = q * total, 0.0, 0.0
    for le, c in cum:
        if c >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * (rank - below) / max(c - below, 1e-9)
        lo, below = le, c
    return lo

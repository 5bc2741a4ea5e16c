"""A short summary of a heaptrack profile of the switch: its totals, and the allocation sites
holding the most memory when the profile ended, each named by its first frames in the
switch's own code (or in a dependency's, when none of ours is on the stack).

    heaptrack_print -f /tmp/soak-heap.zst --print-leaks 1 --print-peaks 0 \\
        --print-temporary 0 --print-allocators 0 --sub-peak-limit 6 | \\
        python3 loadtest/heap_summary.py [TOP]

With loadtest/soak.sh's SOAK_KILL=1 the switch is killed once its load is over, so "held
at the end" is what it still held then (a clean shutdown would free it first).
"""

import re
import sys

top = int(sys.argv[1]) if len(sys.argv) > 1 else 15
lines = sys.stdin.read().split("\n")
totals = [l for l in lines if re.match(r"^(total runtime|calls to allocation|temporary memory|peak heap|peak RSS|total memory leaked)", l)]
start = next((i for i, l in enumerate(lines) if l.startswith("MEMORY LEAKS")), None)
sites = []
if start is not None:
    i = start + 1
    while i < len(lines):
        m = re.match(r"^\s*([0-9.]+[KMG]?B?) leaked over (\d+) calls from:", lines[i])
        if m:
            frames = []
            j = i + 1
            while j < len(lines) and not re.search(r"leaked over", lines[j]) and len(frames) < 40:
                f = re.match(r"^\s+at (\S+):(\d+)", lines[j])
                if f:
                    frames.append((lines[j - 1].strip(), f.group(1), f.group(2)))
                j += 1
            # Frames with a path relative to a crate (ours, or a dependency's own src/).
            ours = [fr for fr in frames if fr[1].startswith("src/")]
            where = "; ".join(f"`{name[:50]}` {path}:{line}" for name, path, line in (ours or frames)[:3])
            sites.append((m.group(1), int(m.group(2)), where))
            i = j
        else:
            i += 1


def size(s):
    unit = {"K": 1e3, "M": 1e6, "G": 1e9}
    v = s.rstrip("B")
    return float(v[:-1]) * unit[v[-1]] if v and v[-1] in unit else float(v or 0)


print("\n".join(totals))
print()
print(f"| held at the end | allocations | where |")
print("|---|---|---|")
for amount, calls, where in sorted(sites, key=lambda s: -size(s[0]))[:top]:
    print(f"| {amount} | {calls} | {where} |")

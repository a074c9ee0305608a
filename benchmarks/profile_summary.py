"""Where the time of a traced step goes: the events of a `jax.profiler` trace summed by name.

    python benchmarks/train_step.py --shapes base --peers '' --profile /tmp/prof     # writes the trace
    python benchmarks/profile_summary.py /tmp/prof/base-bert_jax [--top 30] [--group layer]

Reads the newest `*.xplane.pb` under the directory with `jax.profiler.ProfileData` (no TensorBoard needed),
takes every event of an XLA op (on CPU the thunks of the host's XLA threads; on GPU/TPU the device kernels), names
it by the source op it came from (the op_name metadata of `step.hlo.txt`, which --profile writes beside the
trace), and prints total and per-call time per name, largest first, with its share of all op time. On CPU two
threads run ops at once, so op time is about (threads x wall time). `--group layer` folds `layer_0`, `layer_1`,
... into `layer_N`: one row per kind of op across the layers.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys


def newest_trace(directory: str) -> str:
    found = glob.glob(os.path.join(glob.escape(directory), "**", "*.xplane.pb"), recursive=True)
    if not found:
        raise SystemExit(f"profile_summary.py: no *.xplane.pb under {directory}; run train_step.py --profile DIR first")
    return max(found, key=os.path.getmtime)


def op_events(path: str):
    """(HLO instruction name, duration ns) of every XLA op the trace recorded (events carrying an `hlo_op` stat:
    on CPU the thunks on the host's XLA threads, on GPU/TPU the device planes' kernels)."""
    from jax.profiler import ProfileData

    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                op = next((v for k, v in event.stats if k == "hlo_op"), None)
                if op is not None and event.duration_ns > 0:
                    yield str(op), event.duration_ns


def source_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the source op it came from (its op_name metadata), from the compiled step's text."""
    out = {}
    for m in re.finditer(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', hlo_text, flags=re.M):
        out[m.group(1)] = m.group(2)
    return out


def readable(op: str, sources: dict[str, str], group: str) -> str:
    name = sources.get(op, op)
    name = re.sub(r"^jit\([^)]*\)/", "", name)
    if group == "layer":
        name = re.sub(r"layer_\d+", "layer_N", name)
        name = re.sub(r"\.\d+$", "", name) if name == op else name  # fusion.12 and fusion.13: one kind
    return name


def summarise(events, sources: dict[str, str], group: str) -> list[tuple[str, float, int]]:
    total = collections.defaultdict(float)
    calls = collections.Counter()
    for op, ns in events:
        key = readable(op, sources, group)
        total[key] += ns
        calls[key] += 1
    return sorted(((k, total[k], calls[k]) for k in total), key=lambda r: -r[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace_dir")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--group", choices=("none", "layer"), default="layer")
    args = p.parse_args(argv)
    path = newest_trace(args.trace_dir)
    hlo_path = os.path.join(args.trace_dir, "step.hlo.txt")
    sources = source_names(open(hlo_path).read()) if os.path.exists(hlo_path) else {}
    rows = summarise(op_events(path), sources, args.group)
    if not rows:
        print(f"profile_summary.py: no XLA op events in {path}", file=sys.stderr)
        return 1
    all_ns = sum(r[1] for r in rows)
    print(f"{path}: {len(rows)} op names, {all_ns / 1e6:.1f} ms of op time")
    print(f"{'ms':>9} {'share':>6} {'calls':>6} {'us/call':>9}  op")
    for name, ns, n in rows[:args.top]:
        print(f"{ns / 1e6:>9.2f} {ns / all_ns:>6.1%} {n:>6} {ns / n / 1e3:>9.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

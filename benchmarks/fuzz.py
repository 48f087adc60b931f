"""Long fuzz run of the .dsz reader: N mutated files, each must load or raise FormatError in < 1 s.

    python3 benchmarks/fuzz.py --cases 100000 --json runs/fuzz.json      # random stacked mutations
    python3 benchmarks/fuzz.py --hypothesis 20000                        # hypothesis-driven edits, shrunk on failure
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from deepshrink.testing import Small, base_files, load_outcome, mutate


def run_hypothesis(examples: int, files: list[bytes]) -> int:
    """Let hypothesis choose the base file, byte edits and cut point; it shrinks any failure it finds."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    target = Small()
    edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)

    @settings(max_examples=examples, deadline=1000, database=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(files), edits, st.one_of(st.none(), st.integers(0, 10**6)), st.binary(max_size=16))
    def case(base: bytes, byte_edits: list[tuple[int, int]], cut: int | None, tail: bytes) -> None:
        data = bytearray(base)
        for pos, value in byte_edits:
            data[pos % len(data)] = value
        if cut is not None:
            data = data[: cut % (len(data) + 1)]
        load_outcome(bytes(data) + tail, target)

    t0 = time.perf_counter()
    case()
    print(f"hypothesis: {examples:,} examples in {time.perf_counter() - t0:.1f}s, no failure")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--hypothesis", type=int, metavar="N", help="run N hypothesis examples instead")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--json", type=Path, default=Path("runs/fuzz.json"))
    args = ap.parse_args()
    files = base_files()
    if args.hypothesis:
        return run_hypothesis(args.hypothesis, files)
    target = Small()
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    failures = []
    slowest = 0.0
    t0 = time.perf_counter()
    for i in range(args.cases):
        # Stack up to three mutations so damage compounds.
        data = files[i % len(files)]
        names = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            name, data = mutate(data, rng)
            names.append(name)
        t = time.perf_counter()
        try:
            outcomes[load_outcome(data, target)] += 1
        except Exception:
            outcomes["OTHER"] += 1
            failures.append({"case": i, "mutations": names, "error": traceback.format_exc(limit=3)})
        dt = time.perf_counter() - t
        slowest = max(slowest, dt)
        if dt >= 1.0:
            failures.append({"case": i, "mutations": names, "error": f"slow: {dt:.2f}s"})
        for n in names:
            outcomes[n] += 1
        if (i + 1) % 20000 == 0:
            print(f"{i + 1:,} cases, {time.perf_counter() - t0:.1f}s, {dict(outcomes)}", flush=True)
    wall = time.perf_counter() - t0
    result = {"cases": args.cases, "wall_s": wall, "slowest_s": slowest, "outcomes": dict(outcomes), "failures": failures[:50]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"{args.cases:,} cases in {wall:.1f}s, slowest load {slowest * 1000:.1f} ms; "
          f"FormatError {outcomes['FormatError']:,}, loaded {outcomes['loaded']:,}, other {outcomes['OTHER']}, "
          f"failures {len(failures)}; wrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

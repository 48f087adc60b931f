"""Long fuzz run of the .dsz reader: N mutated files, each must load or raise FormatError in < 1 s.

    python3 benchmarks/fuzz.py --cases 100000 --json runs/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_fuzz import Small, base_files

from deepshrink.testing import load_outcome, mutate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--json", type=Path, default=Path("runs/fuzz.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = base_files(Path(tmp))
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

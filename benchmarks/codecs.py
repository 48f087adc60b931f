"""Coded size against the order-0 entropy, and encode/decode speed, of each coder.

    python3 benchmarks/codecs.py --json runs/codecs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from deepshrink.codec.entropy import Coder, decode_stream, encode_stream, entropy_bits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=2_000_000)
    ap.add_argument("--json", type=Path, default=Path("runs/codecs.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results = {}
    print(f"{'alphabet':>8} {'coder':>8} {'bytes':>10} {'/entropy':>9} {'enc M/s':>8} {'dec M/s':>8}")
    for alphabet, p in ((2, 0.2), (33, 0.2), (257, 0.05)):
        s = np.minimum(rng.geometric(p, args.symbols) - 1, alphabet - 1).astype(np.uint16)
        bound = entropy_bits(np.bincount(s, minlength=alphabet)) / 8
        for coder in Coder:
            encode_stream(s[:1000], alphabet, coder)  # compile outside the timing
            t = time.perf_counter()
            data = encode_stream(s, alphabet, coder)
            enc = time.perf_counter() - t
            t = time.perf_counter()
            out = decode_stream(data, s.size, alphabet, coder, "bench")
            dec = time.perf_counter() - t
            assert np.array_equal(out, s)
            r = {"bytes": len(data), "over_entropy": len(data) / bound, "encode_msym_s": s.size / enc / 1e6,
                 "decode_msym_s": s.size / dec / 1e6}
            results[f"{alphabet}_{coder.value}"] = r
            print(f"{alphabet:>8} {coder.value:>8} {len(data):>10,} {r['over_entropy']:>9.4f} {r['encode_msym_s']:>8.0f} "
                  f"{r['decode_msym_s']:>8.0f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

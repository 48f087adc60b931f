"""At least 5,000 mutated files per run: each load ends in under a second, with success or FormatError."""

from __future__ import annotations

import random
import time
from collections import Counter

from deepshrink.testing import MUTATIONS, Small, base_files, load_outcome, mutate

CASES = 5000


def test_fuzz_loader_only_raises_format_error(tmp_path):
    files = base_files()
    target = Small()
    for data in files:  # compile every decoder variant outside the timed loop (fresh numba cache in CI)
        assert load_outcome(data, target) == "loaded"
    rng = random.Random(12345)
    outcomes: Counter[str] = Counter()
    slowest = 0.0
    for i in range(CASES):
        name, data = mutate(files[i % len(files)], rng)
        t = time.perf_counter()
        try:
            outcomes[load_outcome(data, target)] += 1
        except Exception as exc:
            raise AssertionError(f"case {i} ({name}) raised {type(exc).__name__}: {exc}") from exc
        slowest = max(slowest, time.perf_counter() - t)
        outcomes[name] += 1
    assert slowest < 1.0
    assert outcomes["FormatError"] > CASES // 2
    assert all(outcomes[m] > CASES // (2 * len(MUTATIONS)) for m in MUTATIONS)

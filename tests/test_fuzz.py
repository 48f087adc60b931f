"""At least 5,000 mutated files per run: each load ends in under a second, with success or FormatError."""

from __future__ import annotations

import random
import time
from collections import Counter

import torch
from torch import nn

import deepshrink as ds
from deepshrink.testing import MUTATIONS, load_outcome, mutate

CASES = 5000


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3)
        self.fc = nn.Linear(120, 40)
        self.out = nn.Linear(40, 10)
        self.bn = nn.BatchNorm1d(10)
        self.tied = nn.Linear(40, 10)  # holds out's weight: files carry an alias
        self.tied.weight = self.out.weight


def base_files(tmp_path) -> list[bytes]:
    torch.manual_seed(0)
    m = Small()
    ds.prune_(m, ds.PruneConfig(layer_sparsity={"conv": 0.5, "fc": 0.9, "out": 0.7}))
    ds.share_weights_(m, ds.ShareConfig(conv_bits=8, fc_bits=4, layer_bits={"out": 2}))
    files = []
    for coder in ds.CoderChoice:
        path = tmp_path / f"{coder.value}.dsz"
        ds.save(m, path, ds.EncodeConfig(coder=coder, index_bits=None if coder == "auto" else 3))
        files.append(path.read_bytes())
    return files


def test_fuzz_loader_only_raises_format_error(tmp_path):
    files = base_files(tmp_path)
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

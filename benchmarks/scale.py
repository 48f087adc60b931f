"""Compress, save and load AlexNet or VGG-16 at full size; compare with torch.save / torch.load.

Random weights, magnitude-pruned per layer to the paper's densities (Tables 4 and 5), shared at the
paper's bit widths (8 conv / 5 fc), saved with the default coder and per-layer index width, loaded
into a fresh model; then the decoded dense weights go through torch.save and torch.load. Timings
are taken in the same process, one after the other; peak RSS is the whole process's high-water mark.

    python3 benchmarks/scale.py --arch vgg16 --json runs/scale_vgg16.json
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

import deepshrink as ds
from deepshrink.codec import warm_up
from deepshrink.experiments.models import build, paper_layer_names
from deepshrink.format.header import RawEntry
from deepshrink.format.reader import Reader
from deepshrink.reporting.report import order0_bytes

sys.path.insert(0, str(Path(__file__).parent))
from paper_tables import PAPER


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_mb() -> float:
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return float("nan")


def phase_peak_mb() -> float:
    """High-water mark since the last call (Linux: VmHWM, reset through clear_refs), in MiB."""
    try:
        hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return hwm / 1024
    except (OSError, StopIteration):
        return float("nan")


def entropy_bound_bytes(path: Path) -> float:
    """Order-0 entropy of every shared tensor's entry-wise streams, plus codebooks and raw tensors, in bytes."""
    reader = Reader.open(path)
    total = 0.0
    for t in reader.header.tensors:
        if isinstance(t, RawEntry):
            total += t.data.length
            continue
        total += t.codebook.length + order0_bytes(reader, t)
    return total


def run(arch: str, seed: int, workdir: Path) -> dict[str, float]:
    torch.manual_seed(seed)
    model = build(arch)
    res_build = phase_peak_mb()
    dense_bytes = sum(p.numel() * 4 for p in model.parameters())
    names = paper_layer_names(arch)
    target = ds.PruneConfig(layer_sparsity={m: 1.0 - PAPER[arch][p][0] for m, p in names.items()})
    res: dict[str, float] = {"dense_bytes": dense_bytes, "peak_mb_build": res_build}

    t = time.perf_counter()
    ds.prune_(model, target)
    res["prune_s"] = time.perf_counter() - t
    res["peak_mb_prune"] = phase_peak_mb()
    t = time.perf_counter()
    ds.share_weights_(model, ds.ShareConfig(conv_bits=8, fc_bits=5))
    res["share_s"] = time.perf_counter() - t
    res["peak_mb_share"] = phase_peak_mb()
    path = workdir / f"{arch}.dsz"
    t = time.perf_counter()
    res["file_bytes"] = ds.save(model, path)
    res["save_s"] = time.perf_counter() - t
    res["peak_mb_save"] = phase_peak_mb()

    warm_up()  # the steady state: numba's first-call dispatch is a one-off per process, not load time
    # Keep one layer to check the round trip, and let the compressed model go before the fresh one is
    # built, as a user loading on a device would.
    probe = [n for n in names if n.startswith("classifier")][-1]
    expected = model.get_submodule(probe).weight.detach().clone()
    del model
    gc.collect()
    res["rss_mb_before_fresh"] = rss_mb()
    fresh = build(arch)
    res["rss_mb_before_load"] = rss_mb()
    t = time.perf_counter()
    ds.load(path, into=fresh)
    res["load_s"] = time.perf_counter() - t
    res["peak_mb_load"] = phase_peak_mb()
    res["loaded_equals_memory"] = bool(torch.equal(fresh.get_submodule(probe).weight, expected))

    # The dense baseline, on the same (decoded) weights: torch.save / torch.load of the state_dict.
    dense_path = workdir / "dense.pt"
    t = time.perf_counter()
    torch.save(fresh.state_dict(), dense_path)
    res["dense_torch_save_s"] = time.perf_counter() - t
    del fresh
    gc.collect()
    t = time.perf_counter()
    loaded = torch.load(dense_path, weights_only=True)
    res["dense_torch_load_s"] = time.perf_counter() - t
    res["peak_mb_dense_torch"] = phase_peak_mb()
    res["dense_file_bytes"] = dense_path.stat().st_size
    del loaded
    gc.collect()
    # Each phase_peak_mb() call resets the kernel's high-water mark (and with it ru_maxrss), so the
    # whole run's peak is the largest phase peak.
    res["peak_rss_bytes"] = int(max(max(v for k, v in res.items() if k.startswith("peak_mb_")) * 2**20, peak_rss_bytes()))
    res["entropy_bound_bytes"] = entropy_bound_bytes(path)
    res["file_over_bound"] = res["file_bytes"] / res["entropy_bound_bytes"]
    res["ratio"] = dense_bytes / res["file_bytes"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["alexnet", "vgg16"], default="vgg16")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        res = run(args.arch, args.seed, Path(tmp))
    for k, v in res.items():
        print(f"{k:>22}: {v:,.3f}" if isinstance(v, float) else f"{k:>22}: {v:,}")
    checks = {
        "load_s <= dense_torch_load_s": res["load_s"] <= res["dense_torch_load_s"],
        "share_s + save_s <= 30": res["share_s"] + res["save_s"] <= 30,
        "peak_rss_bytes <= 3 * dense_bytes": res["peak_rss_bytes"] <= 3 * res["dense_bytes"],
        "file_bytes <= 1.01 * entropy_bound_bytes": res["file_bytes"] <= 1.01 * res["entropy_bound_bytes"],
    }
    for k, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    out = args.json or Path(f"runs/scale_{args.arch}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res | {"checks": checks}, indent=2))
    print(f"wrote {out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

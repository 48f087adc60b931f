"""Compress, save and load AlexNet or VGG-16 at full size; compare with torch.save / torch.load.

Random weights, magnitude-pruned per layer to the paper's densities (Tables 4 and 5), shared at the
paper's bit widths (8 conv / 5 fc), saved with the default coder and per-layer index width, loaded
into a fresh model. Timings are taken in the same process, one after the other.

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

import numpy as np
import torch

import deepshrink as ds
from deepshrink.container import read_header
from deepshrink.entropy import decode_stream, entropy_bits
from deepshrink.models import build, paper_layer_names

sys.path.insert(0, str(Path(__file__).parent))
from paper_tables import PAPER  # noqa: E402


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def entropy_bound_bytes(path: Path) -> float:
    """Order-0 entropy of every coded stream, plus codebooks and raw tensors, in bytes."""
    header, tensors = read_header(path)
    raw = memoryview(path.read_bytes())
    data_start = len(raw) - header["data_bytes"]
    total = 0.0
    for t in tensors:
        if t["encoding"] == "raw":
            total += t["data"][1]
            continue
        total += t["codebook"][1]
        for key in ("weights", "index"):
            coder, (off, length, _), alphabet = t[key]
            syms = decode_stream(raw[data_start + off : data_start + off + length], t["entries"], alphabet, coder, key)
            total += entropy_bits(np.bincount(syms, minlength=alphabet)) / 8
    return total


def run(arch: str, seed: int, workdir: Path) -> dict[str, float]:
    torch.manual_seed(seed)
    model = build(arch)
    dense_bytes = sum(p.numel() * 4 for p in model.parameters())
    names = paper_layer_names(arch)
    target = ds.PruneConfig(layer_sparsity={m: 1.0 - PAPER[arch][p][0] for m, p in names.items()})
    res: dict[str, float] = {"dense_bytes": dense_bytes}

    # Dense baseline first, while the model is dense: torch.save / torch.load of the state_dict.
    dense_path = workdir / "dense.pt"
    t = time.perf_counter()
    torch.save(model.state_dict(), dense_path)
    res["dense_torch_save_s"] = time.perf_counter() - t
    t = time.perf_counter()
    loaded = torch.load(dense_path, weights_only=True)
    res["dense_torch_load_s"] = time.perf_counter() - t
    res["dense_file_bytes"] = dense_path.stat().st_size
    del loaded
    dense_path.unlink()
    gc.collect()

    t = time.perf_counter()
    ds.prune_(model, target)
    res["prune_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ds.share_weights_(model, ds.ShareConfig(conv_bits=8, fc_bits=5))
    res["share_s"] = time.perf_counter() - t
    path = workdir / f"{arch}.dsz"
    t = time.perf_counter()
    res["file_bytes"] = ds.save(model, path)
    res["save_s"] = time.perf_counter() - t

    fresh = build(arch)
    t = time.perf_counter()
    ds.load(path, into=fresh)
    res["load_s"] = time.perf_counter() - t
    probe = next(n for n in names if n.startswith("classifier"))
    res["loaded_equals_memory"] = bool(torch.equal(fresh.get_submodule(probe).weight, model.get_submodule(probe).weight))
    del fresh, model
    gc.collect()
    res["peak_rss_bytes"] = peak_rss_bytes()
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

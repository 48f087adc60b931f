"""Batch-1 and batch-64 times of the paper's fc layers: dense, torch CSR, scipy CSR and ours.

AlexNet fc6/fc7/fc8 and VGG-16 fc6/fc7/fc8 at the paper's densities (Tables 4, 5) with random
weights shared at 5 bits (31 centroids). Median of repeated runs, all in the same process.

    python3 benchmarks/sparse_matvec.py --json runs/sparse_matvec.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from deepshrink.runtime.kernels import SparseCodebookMatrix

# (out, in, density, paper batch-1 CPU speedup over dense, Table 8)
LAYERS = {
    "alexnet_fc6": (4096, 9216, 0.09, 2.5), "alexnet_fc7": (4096, 4096, 0.09, 4.8), "alexnet_fc8": (1000, 4096, 0.25, 1.3),
    "vgg16_fc6": (4096, 25088, 0.04, 9.3), "vgg16_fc7": (4096, 4096, 0.04, 9.9), "vgg16_fc8": (1000, 4096, 0.23, 1.0),
}


def median_us(fn: Callable[[], object], min_time: float = 0.5, min_reps: int = 7) -> float:
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 2000:
            break
    return statistics.median(times) * 1e6


def layer(out_f: int, in_f: int, density: float, seed: int) -> tuple[torch.Tensor, SparseCodebookMatrix]:
    rng = np.random.default_rng(seed)
    nnz_per_row = rng.binomial(in_f, density, out_f)
    cols = np.concatenate([np.sort(rng.choice(in_f, n, replace=False)) for n in nnz_per_row])
    row_ptr = np.concatenate([[0], np.cumsum(nnz_per_row)])
    codebook = np.sort(rng.normal(0, 0.02, 31)).astype(np.float32)
    codes = rng.integers(0, 31, cols.size).astype(np.uint8)
    m = SparseCodebookMatrix((out_f, in_f), row_ptr, cols, codes, codebook)
    return m.to_dense(), m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("runs/sparse_matvec.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    ok = True
    print(f"{'layer':<12} {'b':>3} {'dense':>9} {'torchCSR':>9} {'scipyCSR':>9} {'ours':>9} {'vs dense':>8} {'paper':>6} "
          f"{'vs scipy':>8} {'vs tCSR':>7}")
    for i, (name, (out_f, in_f, dens, paper)) in enumerate(LAYERS.items()):
        w, ours = layer(out_f, in_f, dens, i)
        wcsr = w.to_sparse_csr()
        scsr = sp.csr_matrix(w.numpy())
        res: dict = {"density": dens, "paper_speedup_b1": paper}
        for b in (1, 64):
            x = torch.randn(b, in_f)
            xt_np = np.ascontiguousarray(x.numpy().T)
            xt = x.T.contiguous()
            y_ref = F.linear(x, w)
            assert torch.allclose(ours.matmul_t(x, None), y_ref, rtol=1e-4, atol=1e-4)
            r = {
                "dense_us": median_us(lambda: F.linear(x, w)),  # noqa: B023
                "torch_csr_us": median_us(lambda: torch.sparse.mm(wcsr, xt)),  # noqa: B023
                "scipy_csr_us": median_us(lambda: scsr @ xt_np),  # noqa: B023
                "ours_us": median_us(lambda: ours.matmul_t(x, None)),  # noqa: B023
            }
            r["speedup_vs_dense"] = r["dense_us"] / r["ours_us"]
            r["speedup_vs_scipy"] = r["scipy_csr_us"] / r["ours_us"]
            r["speedup_vs_torch_csr"] = r["torch_csr_us"] / r["ours_us"]
            res[f"b{b}"] = r
            print(f"{name:<12} {b:>3} {r['dense_us']:9.0f} {r['torch_csr_us']:9.0f} {r['scipy_csr_us']:9.0f} {r['ours_us']:9.0f} "
                  f"{r['speedup_vs_dense']:7.1f}x {paper if b == 1 else '':>6} {r['speedup_vs_scipy']:7.1f}x "
                  f"{r['speedup_vs_torch_csr']:6.1f}x")
        res["bytes"] = {"dense": w.numel() * 4, "ours": ours.nbytes,
                        "torch_csr": wcsr.values().nbytes + wcsr.col_indices().nbytes + wcsr.crow_indices().nbytes}
        res["bytes"]["ours_over_dense"] = ours.nbytes / (w.numel() * 4)
        res["checks"] = {
            "b1_at_least_paper_speedup": res["b1"]["speedup_vs_dense"] >= paper,
            "b1_2x_scipy": res["b1"]["speedup_vs_scipy"] >= 2.0,
            "b64_not_slower_than_torch_csr": res["b64"]["speedup_vs_torch_csr"] >= 1.0,
            "bytes_at_most_eighth_of_dense": res["bytes"]["ours_over_dense"] <= 1 / 8,
        }
        ok &= all(res["checks"].values())
        results[name] = res
    for name, res in results.items():
        print(f"{name:<12} bytes ours/dense {res['bytes']['ours_over_dense']:.3f}  checks: "
              + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in res["checks"].items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

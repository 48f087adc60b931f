"""Check our storage accounting against the paper's Tables 4 (AlexNet) and 5 (VGG-16).

Builds each model with random weights, prunes every layer at the paper's density at random
positions, shares weights at the paper's bit widths (8 conv / 5 fc) and saves with the paper's index
width (4 bits AlexNet, 5 bits VGG-16) and coder (Huffman), then once more with our defaults (best
coder and index width per layer). Prints per-layer P+Q and P+Q+H compress rates beside the paper's.

    python3 benchmarks/paper_tables.py --json runs/paper_tables.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import deepshrink as ds
from deepshrink.experiments.models import build, paper_layer_names

# (density after pruning, P+Q rate, P+Q+H rate) per layer, from the paper.
PAPER = {
    "alexnet": {
        "conv1": (0.84, 0.326, 0.2053), "conv2": (0.38, 0.145, 0.0943), "conv3": (0.35, 0.131, 0.0844),
        "conv4": (0.37, 0.141, 0.0911), "conv5": (0.37, 0.140, 0.0943), "fc6": (0.09, 0.030, 0.0239),
        "fc7": (0.09, 0.030, 0.0246), "fc8": (0.25, 0.073, 0.0585),
    },
    "vgg16": {
        "conv1_1": (0.58, 0.400, 0.2997), "conv1_2": (0.22, 0.098, 0.0699), "conv2_1": (0.34, 0.143, 0.0891),
        "conv2_2": (0.36, 0.147, 0.0931), "conv3_1": (0.53, 0.217, 0.1115), "conv3_2": (0.24, 0.097, 0.0567),
        "conv3_3": (0.42, 0.170, 0.0896), "conv4_1": (0.32, 0.131, 0.0729), "conv4_2": (0.27, 0.109, 0.0593),
        "conv4_3": (0.34, 0.140, 0.0747), "conv5_1": (0.35, 0.143, 0.0800), "conv5_2": (0.29, 0.117, 0.0652),
        "conv5_3": (0.36, 0.148, 0.0779), "fc6": (0.04, 0.016, 0.0110), "fc7": (0.04, 0.015, 0.0125),
        "fc8": (0.23, 0.071, 0.0524),
    },
}
INDEX_BITS = {"alexnet": 4, "vgg16": 5}


@torch.no_grad()
def random_pruned(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build(arch)
    names = paper_layer_names(arch)
    g = torch.Generator().manual_seed(seed)
    for module_name, paper_name in names.items():
        w = model.get_submodule(module_name).weight
        w.mul_(torch.rand(w.shape, generator=g) < PAPER[arch][paper_name][0])
    return model


def run(arch: str, seed: int) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per-layer rates (paper layer name -> values) and whole-file figures for each encoding."""
    model = random_pruned(arch, seed)
    t = time.perf_counter()
    ds.share_weights_(model, ds.ShareConfig(conv_bits=8, fc_bits=5, iterations=30))
    share_s = time.perf_counter() - t
    names = paper_layer_names(arch)
    out: dict[str, dict[str, float]] = {name: {} for name in names.values()}
    files: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tag, cfg in (("", ds.EncodeConfig(coder="huffman", index_bits=INDEX_BITS[arch])), ("ours_", ds.EncodeConfig())):
            path = Path(tmp) / f"{arch}.dsz"
            t = time.perf_counter()
            ds.save(model, path, cfg)
            encode_s = time.perf_counter() - t
            t = time.perf_counter()
            ds.load(path, into=build(arch))
            decode_s = time.perf_counter() - t
            rep = ds.report(path)
            for row in rep.layers:
                paper_name = names[row.name.rsplit(".", 1)[0]]
                out[paper_name][f"{tag}pq_rate"] = row.rate_pq
                out[paper_name][f"{tag}pqh_rate"] = row.rate_pqh
            files[f"{tag or 'paper_'}encoding"] = {"file_bytes": rep.file_bytes, "dense_bytes": rep.dense_bytes, "ratio": rep.ratio,
                                   "encode_s": encode_s, "decode_s": decode_s, "share_s": share_s}
    for paper_name, (d, pq, pqh) in PAPER[arch].items():
        out[paper_name].update(paper_density=d, paper_pq_rate=pq, paper_pqh_rate=pqh,
                               pq_rel_err=out[paper_name]["pq_rate"] / pq - 1)
    return out, files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("runs/paper_tables.json"))
    ap.add_argument("--arch", nargs="*", default=["alexnet", "vgg16"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    results: dict[str, dict[str, dict[str, float]]] = {}
    files: dict[str, dict[str, dict[str, float]]] = {}
    worst = 0.0
    for arch in args.arch:
        res, files[arch] = run(arch, args.seed)
        results[arch] = res
        print(f"\n{arch}: paper index bits {INDEX_BITS[arch]}, Huffman; 'ours' = auto coder, per-layer index width")
        print(f"{'layer':<8} {'P+Q':>7} {'paper':>7} {'rel':>7} {'P+Q+H':>7} {'paper':>7} {'ours P+Q+H':>11}")
        for name, (_, pq, pqh) in PAPER[arch].items():
            r = res[name]
            worst = max(worst, abs(r["pq_rel_err"]))
            print(f"{name:<8} {100 * r['pq_rate']:6.2f}% {100 * pq:6.2f}% {100 * r['pq_rel_err']:+6.1f}% "
                  f"{100 * r['pqh_rate']:6.2f}% {100 * pqh:6.2f}% {100 * r['ours_pqh_rate']:10.2f}%")
        for tag in ("", "ours_"):
            w = files[arch][f"{tag or 'paper_'}encoding"]
            print(f"{tag or 'paper_'}file: {w['file_bytes']:,} B of {w['dense_bytes']:,} dense ({w['ratio']:.1f}x), "
                  f"encode {w['encode_s']:.2f}s decode {w['decode_s']:.2f}s share {w['share_s']:.2f}s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    # Layer tables as the issue lays them out; whole-file figures beside them under "files".
    args.json.write_text(json.dumps(results | {"files": files}, indent=2))
    print(f"\nworst P+Q relative error vs the paper: {100 * worst:.1f}%; wrote {args.json}")
    return 0 if worst <= 0.20 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Builds the golden-file models; run as a script to (re)write the committed ``*.dsz`` fixtures.

The weights come from numpy's PCG64 generator, not torch's, so that every CPU (and every
ATEN_CPU_CAPABILITY) builds the same tensors; nothing is trained.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import deepshrink as ds

HERE = Path(__file__).parent


def _fill(model: nn.Module, seed: int) -> nn.Module:
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _, t in sorted(model.state_dict(keep_vars=True).items()):
            if t.is_floating_point():
                t.copy_(torch.from_numpy(rng.standard_normal(tuple(t.shape)).astype(np.float32)))
    return model


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 10))


def _shared_mlp() -> nn.Module:
    m = _fill(mlp(), 1)
    ds.prune_(m, ds.PruneConfig(layer_sparsity={"1": 0.9, "3": 0.5}))
    ds.share_weights_(m, ds.ShareConfig(fc_bits=4))
    return m


def _shared_cnn() -> nn.Module:
    c = _fill(cnn(), 2)
    ds.prune_(c, ds.PruneConfig(sparsity=0.7))
    ds.share_weights_(c, ds.ShareConfig(conv_bits=6, fc_bits=3))
    return c


def cases() -> dict[str, tuple[nn.Module, ds.EncodeConfig]]:
    """name -> (compressed model, encode config); each call builds them afresh.

    The first six were written in format version 1 (by commit ebdca2f) and are re-saved in version 1;
    the ``v2_`` and ``v2d_`` ones in version 2.
    """
    out = {}
    for coder in ("auto", "rans", "huffman", "packed"):
        out[f"mlp_{coder}"] = (_shared_mlp(), ds.EncodeConfig(coder=coder, version=1))
    out["cnn_auto"] = (_shared_cnn(), ds.EncodeConfig(index_bits=3, version=1))
    out["mlp_dense_raw"] = (_fill(mlp(), 3), ds.EncodeConfig(version=1))
    for coder in ("auto", "ctx", "rans"):
        out[f"v2_mlp_{coder}"] = (_shared_mlp(), ds.EncodeConfig(coder=coder))
    out["v2_cnn_auto"] = (_shared_cnn(), ds.EncodeConfig())
    out["v2_mlp_dense_raw"] = (_fill(mlp(), 3), ds.EncodeConfig())
    # Written after codebooks could be stored gap-coded (codebook dtype 3) and the ctx coder gained its mixed model.
    out["v2d_mlp_auto"] = (_shared_mlp(), ds.EncodeConfig())
    out["v2d_cnn_ctx"] = (_shared_cnn(), ds.EncodeConfig(coder="ctx"))
    return out


if __name__ == "__main__":
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for name, (model, cfg) in cases().items():
        ds.save(model, out_dir / f"{name}.dsz", cfg, metadata={"golden": name})
        print(name, (out_dir / f"{name}.dsz").stat().st_size)

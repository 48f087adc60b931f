from __future__ import annotations

import pytest
import torch
from torch import nn

import deepshrink as ds
from deepshrink.codec.entropy import fixed_width


def _saved(tmp_path, **enc):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 10))
    ds.prune_(m, ds.PruneConfig(layer_sparsity={"0": 0.92, "2": 0.7}))
    ds.share_weights_(m, ds.ShareConfig(fc_bits=5))
    path = tmp_path / "m.dsz"
    ds.save(m, path, ds.EncodeConfig(**enc))
    return m, path


def test_report_columns_follow_from_the_file(tmp_path):
    m, path = _saved(tmp_path, coder="huffman", index_bits=4)
    rep = ds.report(path)
    assert [r.name for r in rep.layers] == ["0.weight", "2.weight"]
    r = rep.layers[0]
    assert r.weights == 400 * 300
    assert r.nnz == int((m[0].weight != 0).sum())
    assert r.density == pytest.approx(0.08, abs=0.001)
    assert r.weight_bits_pq == fixed_width(32) == 5 and r.index_bits_pq == 4
    assert r.entries >= r.nnz
    assert r.rate_pq == pytest.approx((r.entries * 9 + 32 * 31) / (32 * r.weights))
    assert r.rate_pqh == pytest.approx(8 * (r.codebook_bytes + r.weight_bytes + r.index_bytes) / (32 * r.weights))
    # Everything in the file is accounted for, and the ratio is against all fp32 parameters.
    total = sum(rep.storage.values())
    assert total == rep.file_bytes == path.stat().st_size
    assert rep.dense_bytes == sum(p.numel() * 4 for p in nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 10)).parameters())
    assert rep.ratio == pytest.approx(rep.dense_bytes / rep.file_bytes)
    text = rep.table()
    assert "Rate(P+Q+H)" in text and "0.weight" in text and "Total" in text
    assert rep.to_dict()["total"]["nnz"] == sum(x.nnz for x in rep.layers)


def test_entropy_coding_beats_fixed_width(tmp_path):
    _, path = _saved(tmp_path)
    rep = ds.report(path)
    assert rep.total.rate_pqh < rep.total.rate_pq


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    from deepshrink.reporting.plot import plot_report

    _, path = _saved(tmp_path)
    matplotlib.use("svg")  # the caller's choice of backend, which plotting must leave alone
    plot_report(ds.report(path), tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == "svg"

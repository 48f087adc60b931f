"""Sparse mode on a real LeNet-5 trained on a slice of Fashion-MNIST: same predictions as dense, within rounding."""

from __future__ import annotations

import torch
from bounds import assert_conv2d_close, assert_linear_close

import deepshrink as ds
from deepshrink.experiments.models import LeNet5
from deepshrink.runtime.kernels import CompressedConv2d, CompressedLinear


def _compressed_lenet5(tmp_path, small_fashion):
    torch.manual_seed(0)
    model = LeNet5()
    from deepshrink.experiments.train import train_epochs

    train_epochs(model, small_fashion.train, 1, 1e-3, progress=False)
    ds.prune_(model, ds.PruneConfig(layer_sparsity={"conv1": 0.3, "conv2": 0.8, "ip1": 0.92, "ip2": 0.8}))
    ds.share_weights_(model)
    ds.save(model, tmp_path / "l5.dsz")
    return model


def test_sparse_mode_lenet5_same_accuracy(tmp_path, small_fashion):
    _compressed_lenet5(tmp_path, small_fashion)
    dense = ds.load(tmp_path / "l5.dsz", into=LeNet5())
    sparse = ds.load(tmp_path / "l5.dsz", into=LeNet5(), mode="sparse")
    assert isinstance(sparse.ip1, CompressedLinear) and isinstance(sparse.conv2, CompressedConv2d)
    x = small_fashion.test.images
    # Each compressed layer, fed what it was fed in the sparse model, matches its dense float64 reference.
    seen: list[str] = []

    def check(name: str):
        def hook(mod, inputs, out):
            ref = dict(dense.named_modules())[name]
            if isinstance(mod, CompressedConv2d):
                assert_conv2d_close(out, inputs[0], ref, ref.weight, ref.bias)
            else:
                assert_linear_close(out, inputs[0], ref.weight, ref.bias)
            seen.append(name)
        return hook

    for name, mod in sparse.named_modules():
        if isinstance(mod, (CompressedLinear, CompressedConv2d)):
            mod.register_forward_hook(check(name))
    with torch.no_grad():
        yd, ys = dense(x), sparse(x)
    assert sorted(seen) == ["conv1", "conv2", "ip1", "ip2"]
    # End to end, predictions may differ only where the dense top-2 margin is within the logit difference.
    d = float((ys - yd).abs().max())
    top2 = yd.topk(2, dim=1).values
    differs = ys.argmax(1) != yd.argmax(1)
    assert bool((top2[differs, 0] - top2[differs, 1] <= 2 * d).all())
    held = sum(m.nbytes for m in sparse.modules() if isinstance(m, (CompressedLinear, CompressedConv2d)))
    assert held < 431_080 * 4 / 8

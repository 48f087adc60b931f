from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from bounds import U32, U64, assert_within_sum_bound, gamma
from torch import nn

import deepshrink as ds
from deepshrink.transforms.sharing import ClusteredWeight, Init, SharedWeight, codebooks, kmeans1d


def _brute_kmeans_cost(values: np.ndarray, centroids: np.ndarray) -> float:
    return float(np.min((values[:, None] - centroids[None, :]) ** 2, axis=1).sum())


@pytest.mark.parametrize("init", list(Init))
def test_kmeans1d_assigns_nearest_and_is_lloyd_fixed_point(init):
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(-0.5, 0.1, 3000), rng.normal(0.4, 0.05, 2000)]).astype(np.float32)
    c, codes = kmeans1d(v, 16, init, iterations=200)
    assert c.dtype == np.float32 and codes.dtype == np.uint8
    assert np.all(np.diff(c) >= 0)
    nearest = np.argmin(np.abs(v[:, None] - c[None, :].astype(np.float64)), axis=1)
    assert np.array_equal(c[codes], c[nearest])
    # Lloyd fixed point: each non-empty centroid is the mean of its members. kmeans1d takes a cluster's
    # sum as the difference of two float64 prefix sums (each off by at most gamma_n * sum|v|, n = v.size)
    # and rounds sum / count to float32 (relative u32); the float64 reference mean is off by at most
    # gamma_m * sum|members| / m.
    total = float(np.abs(v.astype(np.float64)).sum())
    for j in np.unique(codes):
        members = v[codes == j].astype(np.float64)
        mean = members.mean()
        bound = U32 * abs(mean) + (2 * gamma(v.size, U64) * total + gamma(members.size, U64) * np.abs(members).sum()) / members.size
        assert abs(float(c[j]) - mean) <= bound, (j, float(c[j]), mean, bound)
    # Far better than the quantisation of 16 evenly spaced levels would be without fitting.
    linear = np.linspace(v.min(), v.max(), 16)
    assert _brute_kmeans_cost(v, c) <= _brute_kmeans_cost(v, linear)


def test_kmeans1d_fewer_distinct_values_than_clusters():
    v = np.array([0.5, -0.25, 0.5, 0.5, -0.25], np.float32)
    c, codes = kmeans1d(v, 32)
    assert np.array_equal(c[codes], v)
    assert c.size == 2


def test_kmeans1d_empty_and_nan():
    c, codes = kmeans1d(np.zeros(0, np.float32), 8)
    assert codes.size == 0 and c.size == 1
    with pytest.raises(ds.InvalidModelError, match="NaN"):
        kmeans1d(np.array([1.0, np.nan], np.float32), 4)


def test_kmeans1d_large_layer_is_fast_and_light():
    import time

    v = np.random.default_rng(0).standard_normal(5_000_000).astype(np.float32)
    t = time.perf_counter()
    c, codes = kmeans1d(v, 256, iterations=20)
    # An n-by-k float64 distance matrix would be 10 GB; this runs in O(n) memory.
    assert time.perf_counter() - t < 20
    assert codes.max() <= 255 and c.size == 256


def _pruned_mlp() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 6))
    ds.prune_(m, ds.PruneConfig(sparsity=0.7))
    return m


def test_share_keeps_zeros_and_uses_at_most_k_values():
    m = _pruned_mlp()
    zero = m[0].weight.detach() == 0
    ds.share_weights_(m, ds.ShareConfig(fc_bits=3))
    w = m[0].weight.detach()
    assert torch.equal(w == 0, zero)
    assert torch.unique(w[~zero]).numel() <= 8


def test_codebooks_are_the_shared_tensors_trainable_centroids_and_rounding_rounds_those_alone():
    m = _pruned_mlp()
    ds.share_weights_(m, ds.ShareConfig(fc_bits=3), filter_fn=lambda mod, name: name == "0")
    found = codebooks(m)
    assert list(found) == ["0"]
    assert found["0"] is m[0].parametrizations.weight.original
    with torch.no_grad():
        found["0"].add_(1e-4)  # centroids float16 cannot hold
    exact, unshared = found["0"].detach().clone(), m[2].weight.detach().clone()
    changed = ds.round_codebooks_(m, torch.float16)
    assert list(changed) == ["0"] and 0 < changed["0"] < 1e-3
    assert torch.equal(found["0"], exact.half().float())
    assert torch.equal(m[2].weight, unshared)


def test_centroid_gradient_is_sum_of_member_gradients():
    m = _pruned_mlp()
    ds.share_weights_(m, ds.ShareConfig(fc_bits=4))
    layer = m[0]
    p = layer.parametrizations.weight
    x = torch.randn(16, 30)
    # Gradient w.r.t. the dense weight, computed with a plain copy of the layer.
    w = layer.weight.detach().clone().requires_grad_(True)
    nn.functional.linear(x, w, layer.bias).pow(2).sum().backward()
    layer(x).pow(2).sum().backward()
    codes, mask = p[0].codes.long(), p[0].mask
    # Each centroid's gradient is a sum of its members' fp32 gradients, in an order autograd picks:
    # within gamma_m * sum|member gradients| of the float64 sum (m = largest cluster).
    g = w.grad[mask].double()
    expected = torch.zeros(p.original.shape, dtype=torch.float64).index_add_(0, codes[mask], g)
    abs_sum = torch.zeros(p.original.shape, dtype=torch.float64).index_add_(0, codes[mask], g.abs())
    assert_within_sum_bound(p.original.grad, expected, abs_sum, int(torch.bincount(codes[mask]).max()), "centroid gradient")


def test_finetuning_moves_centroids_not_assignments():
    m = _pruned_mlp()
    ds.share_weights_(m, ds.ShareConfig(fc_bits=3))
    codes_before = m[0].parametrizations.weight[0].codes.clone()
    zero = m[0].weight.detach() == 0
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    x, y = torch.randn(32, 30), torch.randint(0, 6, (32,))
    cb_before = m[0].parametrizations.weight.original.detach().clone()
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    assert not torch.equal(cb_before, m[0].parametrizations.weight.original.detach())
    assert torch.equal(codes_before, m[0].parametrizations.weight[0].codes)
    assert torch.equal(m[0].weight.detach() == 0, zero)


def test_restore_deepcopy_and_state_dict():
    m = _pruned_mlp()
    ds.share_weights_(m, ds.ShareConfig(fc_bits=4))
    fresh = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 6))
    ds.restore_(fresh, m.state_dict())
    x = torch.randn(5, 30)
    assert torch.equal(fresh(x), m(x))
    assert torch.equal(copy.deepcopy(m)(x), m(x))


@pytest.mark.parametrize("bits", [0, 9, 2.5])
def test_share_config_validation(bits):
    with pytest.raises(ds.ConfigError):
        ds.ShareConfig(fc_bits=bits)


def test_share_config_round_trip():
    cfg = ds.ShareConfig(conv_bits=6, layer_bits={"x": 2}, init="density")
    again = ds.ShareConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.init is Init.DENSITY


def test_nan_weights_rejected_before_work():
    m = nn.Sequential(nn.Linear(3, 3))
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(ds.InvalidModelError, match="layer '0'.*NaN"):
        ds.share_weights_(m)


def test_strip_of_a_deepcopy_leaves_the_original_working():
    m = _pruned_mlp()
    ds.share_weights_(m, ds.ShareConfig(fc_bits=3))
    x = torch.randn(4, 30)
    before = m(x)
    plain = ds.strip_(copy.deepcopy(m))
    assert torch.equal(plain(x), before)
    assert torch.equal(m(x), before)  # torch's remove_parametrizations would break this
    assert type(plain[0]) is nn.Linear and "weight" in dict(plain[0].named_parameters())



def test_clustered_weights_train_in_float_and_compute_with_their_nearest_centroid():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(64, 16)), torch.randn(256, 64)
    ds.prune_(model, ds.PruneConfig(sparsity=0.5))
    kept = model[0].weight != 0
    ds.cluster_weights_(model, ds.ShareConfig(fc_bits=2))
    pz = model[0].parametrizations.weight
    assert isinstance(pz[0], ClusteredWeight) and pz[0].centroids.numel() == 3
    model.eval()
    w = model[0].weight
    assert torch.equal(w != 0, kept) and set(w[kept].tolist()) <= set(pz[0].centroids.tolist())
    # A training forward first moves each centroid to the mean of its members (one Lloyd step); an empty one stays.
    old = torch.tensor([-0.2, 0.0, 0.2])
    pz[0].centroids.copy_(old)
    members = pz.original.detach()[kept]
    nearest = torch.argmin((members[:, None] - old[None, :]).abs(), dim=1)
    expected = torch.stack([members[nearest == j].mean() if (nearest == j).any() else old[j] for j in range(3)])
    model.train()
    model(x).pow(2).mean().backward()
    assert torch.allclose(pz[0].centroids, expected.sort().values, atol=1e-6)
    # The gradient reaches the float weights (straight through); pruned ones get none.
    grad = pz.original.grad
    assert grad is not None and bool((grad[kept] != 0).all()) and bool((grad[~kept] == 0).all())
    # Without gradients (an evaluation in training mode) the centroids stay.
    with torch.no_grad():
        after = pz[0].centroids.clone()
        pz.original.mul_(1.5)
        model(x)
    assert torch.equal(pz[0].centroids, after)
    # state_dict round trip, and sharing keeps what the clustered layer computed.
    model.eval()
    with torch.no_grad():
        out = model(x)
        fresh = ds.restore_(nn.Sequential(nn.Linear(64, 16)), model.state_dict()).eval()
        assert torch.equal(fresh(x), out)
        ds.share_weights_(model, ds.ShareConfig(fc_bits=2))
        assert isinstance(model[0].parametrizations.weight[0], SharedWeight) and torch.allclose(model(x), out, atol=1e-6)
        assert torch.equal(model[0].weight != 0, kept)
    # A shared layer clustered again is expanded to its weights first: no more distinct values than centroids, so
    # each of them is a centroid and the layer computes the same.
    shared = model[0].weight.detach().clone()
    ds.cluster_weights_(model, ds.ShareConfig(fc_bits=3))
    assert isinstance(model[0].parametrizations.weight[0], ClusteredWeight) and torch.equal(model[0].weight, shared)

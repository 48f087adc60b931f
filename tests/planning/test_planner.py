"""The planner on a model that is not a LeNet: a small CNN with BatchNorm, planned on a validation split."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import deepshrink as ds
from deepshrink.experiments.data import Dataset, Split
from deepshrink.experiments.train import evaluate, train_epochs


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10),
    )


@pytest.fixture(scope="module")
def trained(fashion: Dataset) -> tuple[nn.Module, Split]:
    """Trained on 5,000 training images; the validation split is 1,500 further training images (never the test set)."""
    torch.manual_seed(0)
    train, val = fashion.train.subset(6500), None
    val = Split(train.images[5000:], train.labels[5000:])
    train = Split(train.images[:5000], train.labels[:5000])
    model = small_cnn()
    train_epochs(model, train, 2, 2e-3, progress=False)
    return model.eval(), val


def _file_bytes(model: nn.Module, prune: ds.PruneConfig, share: ds.ShareConfig, path) -> tuple[int, nn.Module]:
    m = copy.deepcopy(model)
    ds.prune_(m, prune)
    ds.share_weights_(m, share)
    return ds.save(m, path), m


def test_sensitivity_restores_the_model_and_measures_bytes(trained):
    model, val = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sens = ds.sensitivity(model, lambda m: evaluate(m, val), densities=(1.0, 0.3, 0.05), bits=(6, 3))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert list(sens.layers) == ["0", "4", "9", "11"]
    fc = sens.layers["9"]
    assert fc.bytes[(0.05, 3)] < fc.bytes[(0.3, 3)] < fc.bytes[(1.0, 3)] and fc.bytes[(0.3, 3)] < fc.bytes[(0.3, 6)]
    assert sens.baseline - fc.metric[(0.05, 3)] > sens.baseline - fc.metric[(1.0, 6)] - 0.002
    assert "baseline" in sens.table()


def test_plan_meets_the_budget_and_beats_uniform_settings(trained, tmp_path):
    model, val = trained
    metric = lambda m: evaluate(m, val)  # noqa: E731
    sens = ds.sensitivity(model, metric)
    p = ds.plan(model, metric, sens, ds.PlanConfig(budget=0.01))
    assert p.baseline - p.checked_metric <= 0.01
    size, compressed = _file_bytes(model, p.prune_config(), p.share_config(), tmp_path / "plan.dsz")
    planned_metric = metric(compressed)
    assert p.baseline - planned_metric <= 0.015  # full k-means (100 iterations) instead of the probes' 30
    # The best uniform setting (one density and one bit width for every layer) at the same validation metric:
    # the plan's, or the dense model's where the plan came out above it (then nothing compressed can match it).
    floor = min(planned_metric, p.baseline)
    uniform = []
    for d in (1.0, 0.7, 0.5, 0.3, 0.2, 0.12, 0.08, 0.05):
        for b in (8, 6, 5, 4, 3):
            s, m = _file_bytes(model, ds.PruneConfig(sparsity=1 - d), ds.ShareConfig(conv_bits=b, fc_bits=b), tmp_path / "u.dsz")
            if metric(m) >= floor:
                uniform.append(s)
    assert uniform, "no uniform setting reaches the validation metric"
    assert size < min(uniform), (size, min(uniform), p.table())


def test_a_plan_within_a_size_fits_it_and_beats_uniform_settings_of_that_size(trained, tmp_path):
    model, val = trained
    metric = lambda m: evaluate(m, val)  # noqa: E731
    sens = ds.sensitivity(model, metric, between=1)
    cap = 3000.0
    p = ds.plan(model, metric, sens, ds.PlanConfig(max_bytes=cap))
    assert p.predicted_bytes <= cap and p.meta["max_bytes"] == cap
    # Where the settings' bytes are measured for real, the plan's prediction is what the file's layers cost.
    size, compressed = _file_bytes(model, p.prune_config(), p.share_config(), tmp_path / "plan.dsz")
    rep = ds.report(tmp_path / "plan.dsz")
    layers = sum(r.weight_bytes + r.index_bytes + r.codebook_bytes for r in rep.layers if r.name.endswith(".weight"))
    assert abs(layers - p.predicted_bytes) < 0.05 * p.predicted_bytes
    planned_metric = metric(compressed)
    uniform = [_file_bytes(model, ds.PruneConfig(sparsity=1 - d), ds.ShareConfig(conv_bits=b, fc_bits=b), tmp_path / "u.dsz")
               for d in (0.5, 0.3, 0.2, 0.12, 0.08, 0.05) for b in (6, 5, 4, 3)]
    best_uniform = max((metric(m) for s, m in uniform if s <= size), default=None)
    assert best_uniform is not None and planned_metric > best_uniform, (planned_metric, best_uniform, p.table())
    # The smallest grid plan, with a warning, where no plan fits.
    tiny = ds.plan(model, metric, sens, ds.PlanConfig(max_bytes=1.0))
    assert tiny.predicted_bytes == sum(min(pr.bytes.values()) for pr in sens.layers.values())


def test_interpolated_settings_sit_between_the_measured_ones(trained):
    model, val = trained
    sens = ds.sensitivity(model, lambda m: evaluate(m, val), densities=(1.0, 0.25), bits=(4,), between=1)
    for probe in sens.layers.values():
        (mid,) = probe.interpolated
        assert mid == (0.5, 4) and probe.measured == [(0.25, 4), (1.0, 4)]
        assert probe.metric[mid] == (probe.metric[(0.25, 4)] + probe.metric[(1.0, 4)]) / 2
        assert probe.bytes[(0.25, 4)] < probe.bytes[mid] < probe.bytes[(1.0, 4)] or probe.numel < 100
    assert "0.500" not in sens.table() and len(sens.to_dict()["layers"]["9"]["grid"]) == 2

"""The whole pipeline end to end, on a small real subset (the full runs are in the closing notes)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import deepshrink as ds
from deepshrink.experiments.data import Dataset
from deepshrink.experiments.models import build
from deepshrink.experiments.reproduce import RECIPES, _fidelity, _splits, combine, load_checkpoint, quick, reproduce
from deepshrink.experiments.train import evaluate, loss


def test_reproduce_lenet_300_100_small(tmp_path, small_fashion: Dataset):
    recipe = replace(quick(replace(RECIPES["lenet-300-100"], epochs=3), len(small_fashion.train)), holdout_size=50,
                     share_criterion=None)
    s = reproduce(recipe, small_fashion, tmp_path, progress=False)
    # A subset of Fashion-MNIST is no data set the recipe knows by name: it compresses to the ratio for any other.
    assert s["recipe"]["pipeline"]["target_ratio"] == recipe.ratios[""] and s["ratio"] >= recipe.ratios[""]
    assert s["ratio"] < 1.5 * recipe.ratios[""]  # the size is spent: the planned bytes, then the bits
    # The held-out split is measured at every step beside the test set, and in the file's model.
    assert all("holdout" in h for h in s["history"] if "test" in h) and 0 < s["final"]["holdout"] <= 1
    assert s["reference"]["test"] > 0.75 and s["reference"]["validation"] > 0.7
    # The recipe decides on the loss relative to the reference's; the accuracy on validation is recorded beside it.
    assert recipe.criterion == "loss" and all(-5 < h["validation"] < 0 for h in s["history"] if "validation" in h)
    assert all(0 < h["validation_accuracy"] <= 1 for h in s["history"] if "validation" in h)
    assert s["final"]["validation_loss"] > 0 and s["reference"]["validation_loss"] > 0
    assert s["loaded_equals_memory"]
    assert s["file_bytes"] == (tmp_path / "model.dsz").stat().st_size
    # Every stage was measured on validation and, for the record, on the test set; the last one is what the file holds.
    measured = [h for h in s["history"] if "validation" in h]
    assert {h["stage"] for h in measured} >= {"prune", "final retrain", "share"} and all("test" in h for h in measured)
    # Where to end was planned from measured sensitivities within the size, and every round went toward it.
    plans = [h for h in s["history"] if h["stage"] == "plan" and "planned" in h]
    assert plans and all(h["planned"]["max_bytes"] < s["dense_bytes"] / recipe.ratios[""] for h in plans)
    shared = [h["test"] for h in s["history"] if h["stage"] in ("share", "round codebooks")]
    assert shared and s["final"]["test"] in shared
    # The plan is the planner's: per-layer densities below one and bits in range; the file carries it too.
    assert all(v["density"] < 1 and 1 <= v["bits"] <= 8 for v in s["plan"]["layers"].values())
    assert ds.report(tmp_path / "model.dsz").metadata["plan"].keys() == s["plan"]["layers"].keys()
    assert json.loads((tmp_path / "summary.json").read_text())["file_bytes"] == s["file_bytes"]
    fresh = ds.load(tmp_path / "model.dsz", into=build("lenet-300-100"))
    assert evaluate(fresh, small_fashion.test) == s["final"]["test"]
    # A second run reuses the cached reference model; this one's sharing stage decides on the fidelity to it (the recipes').
    again = reproduce(replace(recipe, share_criterion="fidelity"), small_fashion, tmp_path, progress=False)
    assert again["reference_cached"] and again["reference"] == s["reference"]
    reference = build("lenet-300-100")
    reference.load_state_dict(load_checkpoint(tmp_path / "reference.pt"))
    last = [h for h in again["history"] if h["stage"] in ("share", "round codebooks")][-1]
    val = _splits(small_fashion, recipe)[1]
    fidelity = _fidelity(reference, val)
    assert last["validation"] == pytest.approx(fidelity(ds.load(tmp_path / "model.dsz", into=build("lenet-300-100"))))
    # Whether the file met the budget is the criterion measured on it: its validation loss over the reference's.
    kept_loss = loss(fresh, val) / loss(reference, val)
    assert s["within_budget"] == (-kept_loss >= -1 - recipe.pipeline.max_drop)
    c = combine([s, again])
    assert [r["within_budget"] for r in c["runs"]] == [s["within_budget"], again["within_budget"]]
    assert c["drop_points"]["worst"] == max(s["test_drop_points"], again["test_drop_points"]) and len(c["runs"]) == 2
    assert s["holdout_drop_points"] == 100 * (s["reference"]["holdout"] - s["final"]["holdout"])
    # The drop's paired standard error is carried by the test images the reference and the file judge differently.
    assert s["test_drop_se_points"] > 0 and 0 < s["test_discordant"] <= len(small_fashion.test)
    assert [r["drop_se_points"] for r in c["runs"]] == [s["test_drop_se_points"], again["test_drop_se_points"]]
    assert c["holdout_drop_points"]["median"] == pytest.approx((s["holdout_drop_points"] + again["holdout_drop_points"]) / 2)


def test_the_splits_are_carved_from_the_end_of_the_training_images_in_order_and_never_overlap(small_fashion: Dataset):
    recipe = replace(RECIPES["lenet-5"], val_size=300, probe_size=200, holdout_size=100)
    train, val, probe, holdout = _splits(small_fashion, recipe)
    n = len(small_fashion.train)
    assert (len(train), len(holdout), len(probe), len(val)) == (n - 600, 100, 200, 300)
    pieces = torch.cat([train.images, holdout.images, probe.images, val.images])
    assert torch.equal(pieces, small_fashion.train.images)
    assert _splits(small_fashion, replace(recipe, probe_size=0, holdout_size=0))[2:] == (None, None)


@pytest.mark.slow
def test_cli_reproduce_quick_and_inspect(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "deepshrink.cli", "reproduce", "lenet-5", "--quick", "3000", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Rate(P+Q+H)" in proc.stdout and "from the file" in proc.stdout and "paired standard error" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arch"] == "lenet-5" and summary["loaded_equals_memory"]
    proc = subprocess.run([sys.executable, "-m", "deepshrink.cli", "inspect", str(out / "model.dsz"), "--json"],
                          capture_output=True, text=True, check=True)
    rep = json.loads(proc.stdout)
    assert rep["file_bytes"] == summary["file_bytes"]
    names = [r["name"] for r in rep["layers"]] + list(rep["raw"])
    assert sorted(names) == sorted(f"{layer}.{t}" for layer in ("conv1", "conv2", "ip1", "ip2") for t in ("weight", "bias"))
    proc = subprocess.run([sys.executable, "-m", "deepshrink.cli", "bench", str(out / "model.dsz"), "--reps", "2"],
                          capture_output=True, text=True, check=True)
    assert "speedup" in proc.stdout and "lenet-5" in proc.stdout
    bad = tmp_path / "bad.dsz"
    bad.write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, "-m", "deepshrink.cli", "inspect", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a .dsz file" in proc.stderr


def test_train_epochs_optimizers(small_fashion: Dataset):
    from deepshrink.experiments.train import train_epochs

    for opt in ("adam", "sgd"):
        torch.manual_seed(0)
        m = build("lenet-300-100")
        before = evaluate(m, small_fashion.test)
        train_epochs(m, small_fashion.train, 1, 1e-3 if opt == "adam" else 0.05, optimizer=opt, weight_decay=5e-4, progress=False)
        assert evaluate(m, small_fashion.test) > before + 0.3
    with pytest.raises(ds.ConfigError, match="rmsprop"):
        train_epochs(m, small_fashion.train, 1, 1e-3, optimizer="rmsprop", progress=False)

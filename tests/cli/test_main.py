"""The command line's own logic (the runs themselves are in tests/integration)."""

from __future__ import annotations

from deepshrink.cli.main import _combined_table, _overridden, build_parser
from deepshrink.experiments.reproduce import RECIPES, combine


def _recipe(*argv: str):
    return _overridden(RECIPES["lenet-300-100"], build_parser().parse_args(["reproduce", "lenet-300-100", *argv]))


def test_reproduce_flags_override_only_what_they_name():
    base = RECIPES["lenet-300-100"]
    assert _recipe() == base
    r = _recipe("--retrain-epochs", "10", "--final-retrain-epochs", "30", "--holdout-size", "5000")
    assert (r.pipeline.retrain_epochs, r.pipeline.final_retrain_epochs, r.holdout_size) == (10, 30, 5000)
    assert r.pipeline.max_drop == base.pipeline.max_drop and r.probe_size == base.probe_size and r.epochs == base.epochs
    assert base.share_criterion == "fidelity" and _recipe("--share-criterion", "criterion").share_criterion is None
    assert _recipe("--retrain-lr", "0.1").retrain_lr == 0.1 != base.retrain_lr
    clustered = _recipe("--cluster-epochs", "0", "--cluster-lr", "0.01")
    assert (clustered.pipeline.cluster_epochs, clustered.cluster_lr) == (0, 0.01) != (base.pipeline.cluster_epochs, base.cluster_lr)
    assert base.criterion == "loss" and _recipe("--criterion", "fidelity").criterion == "fidelity"
    assert base.val_size == 5000 and _recipe("--val-size", "10000").val_size == 10000
    shared = _recipe("--max-drop", "0.1", "--share-max-drop", "3").pipeline
    assert base.pipeline.share_max_drop is None and (shared.share_max_drop, shared.max_drop) == (0.03, 0.001)


def test_the_ratio_is_the_recipes_for_the_data_set_unless_given():
    base = RECIPES["lenet-5"]
    assert base.pipeline.target_ratio is None  # filled in for the data set at run time
    assert base.for_data("mnist").pipeline.target_ratio == base.ratios["mnist"] > 160
    assert base.for_data("fashion-mnist").pipeline.target_ratio == base.ratios["fashion-mnist"] >= 50
    assert base.for_data("").pipeline.target_ratio == base.ratios[""]
    given = _overridden(base, build_parser().parse_args(["reproduce", "lenet-5", "--ratio", "120"]))
    assert given.for_data("mnist").pipeline.target_ratio == 120.0 and _recipe().pipeline.target_ratio is None


def test_the_combined_table_shows_each_drop_beside_its_paired_standard_error():
    def run(seed: int, drop: float, se: float, within: bool) -> dict:
        return {"arch": "lenet-5", "data": "mnist", "seed": seed, "reference": {"test": 0.992},
                "final": {"test": 0.992 - drop / 100}, "test_drop_points": drop, "test_drop_se_points": se,
                "ratio": 100.0 + seed, "file_bytes": 17000, "seconds": {"reference": 60.0, "compress": 540.0},
                "within_budget": within}

    lines = _combined_table(combine([run(0, 0.12, 0.07, True), run(1, 0.31, 0.09, False)])).splitlines()
    assert lines[1].split() == ["seed", "ref", "err", "%", "err", "%", "drop", "pt", "se", "pt", "ratio", "bytes", "min", "budget"]
    assert lines[2].split() == ["0", "0.80", "0.92", "0.12", "0.07", "100.0x", "17,000", "10.0", "met"]
    assert lines[3].split()[3:5] == ["0.31", "0.09"] and lines[3].split()[-1] == "over"
    assert "drop 0.31 pt" in lines[5]  # worst

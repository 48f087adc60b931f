"""Every figure experiment on a tiny slice (one epoch everywhere), and the gallery that shows them."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from deepshrink.experiments.data import Dataset
from deepshrink.experiments.figures import EXPERIMENTS, FigureRun, run_experiment, write_gallery


@pytest.fixture(scope="module")
def results(fashion: Dataset, tmp_path_factory) -> tuple[FigureRun, list[dict]]:
    pytest.importorskip("matplotlib")
    data = replace(fashion, train=fashion.train.subset(600), test=fashion.test.subset(300))
    run = FigureRun("lenet-300-100", data, tmp_path_factory.mktemp("figures"), epochs=1, reference_epochs=1)
    return run, [run_experiment(name, run) for name in EXPERIMENTS]


def test_each_experiment_writes_a_png_and_its_points(results):
    run, rs = results
    for r in rs:
        assert (run.out / r["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        saved = json.loads((run.out / f"{r['experiment']}.json").read_text())
        assert saved["claim"]["claim"] and isinstance(saved["claim"]["holds"], bool)
        assert saved["points"] and saved["arch"] == "lenet-300-100"


def test_fig6_points_are_real_measurements(results):
    _, rs = results
    fig6 = next(r for r in rs if r["experiment"] == "fig6")
    sizes = {name: [x for x, _ in pts] for name, pts in fig6["points"].items()}
    # Sizes come from files: pruning + quantization is smaller than pruning alone at the same densities.
    assert all(pq < p for pq, p in zip(sizes["pruning + quantization"], sizes["pruning only"], strict=True))
    assert all(0 < x < 1 for xs in sizes.values() for x in xs)


def test_gallery_references_every_image_and_nothing_missing(results):
    run, rs = results
    page = write_gallery(run.out, rs).read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(images) == sorted(f"{name}.png" for name in EXPERIMENTS)
    assert all((run.out / img).exists() for img in images)
    assert all((run.out / link).exists() for link in re.findall(r'<a href="([^"]+)"', page))

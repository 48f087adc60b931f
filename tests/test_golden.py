"""Files written by earlier releases load to the same tensors, and saving the same model gives the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden.make_golden import cases, cnn, mlp

import deepshrink as ds

GOLDEN = Path(__file__).parent / "golden"
CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_file_loads_to_the_same_tensors(name):
    model, _ = CASES[name]
    fresh = ds.load(GOLDEN / f"{name}.dsz", into=(cnn if name.startswith("cnn") else mlp)())
    expected = ds.strip_(model).state_dict()
    got = fresh.state_dict()
    assert sorted(got) == sorted(expected)
    for key, t in expected.items():
        assert torch.equal(got[key], t), key


@pytest.mark.parametrize("name", sorted(CASES))
def test_saving_the_same_model_gives_the_same_bytes(tmp_path, name):
    model, cfg = cases()[name]
    ds.save(model, tmp_path / "again.dsz", cfg, metadata={"golden": name})
    assert (tmp_path / "again.dsz").read_bytes() == (GOLDEN / f"{name}.dsz").read_bytes()

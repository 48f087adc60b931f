"""Compression state inside real training: checkpoints, resume, deepcopy, DDP, and safe checkpoint loading."""

from __future__ import annotations

import copy
import os
import pickle

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import deepshrink as ds
from deepshrink.experiments.reproduce import load_checkpoint


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 5))


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 24, generator=g), torch.randint(0, 5, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("stage", ["pruned", "shared"])
def test_resume_mid_pipeline_from_checkpoint(tmp_path, stage):
    m = make_mlp()
    ds.prune_(m, ds.PruneConfig(sparsity=0.7))
    if stage == "shared":
        ds.share_weights_(m, ds.ShareConfig(fc_bits=3))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    train_steps(m, opt, 5, seed=1)
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    fresh = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 5))
    ds.restore_(fresh, ckpt["model"])
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(ckpt["opt"])
    zero = m[0].weight.detach() == 0
    assert torch.equal(fresh[0].weight, m[0].weight)
    # Both continue identically, and pruned weights stay zero.
    train_steps(m, opt, 5, seed=2)
    train_steps(fresh, fresh_opt, 5, seed=2)
    assert torch.equal(fresh[0].weight, m[0].weight)
    assert (fresh[0].weight.detach()[zero] == 0).all()
    clone = copy.deepcopy(fresh)
    x = torch.randn(3, 24)
    assert torch.equal(clone(x), fresh(x))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch deepshrink_pwned",))


def test_malicious_checkpoint_is_refused(tmp_path):
    path = tmp_path / "reference.pt"
    with open(path, "wb") as f:
        pickle.dump({"ip1.weight": _Evil()}, f)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ds.DeepShrinkError, match="refusing to load"):
            load_checkpoint(path)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "deepshrink_pwned").exists()


def _gather_equal(t: torch.Tensor) -> bool:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return all(torch.equal(parts[0], p) for p in parts[1:])


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = make_mlp()
    checks: list[bool] = []
    ds.prune_(model, ds.PruneConfig(sparsity=0.3))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for step in range(3):
        ds.prune_(model, ds.PruneConfig(sparsity=0.3 + 0.2 * step))
        train_steps(ddp, opt, 3, seed=100 * rank + step)  # each rank sees different data
        for layer in (model[0], model[2]):
            mask = layer.parametrizations.weight[0].mask
            checks.append(_gather_equal(mask.to(torch.uint8)))
            checks.append(bool((layer.weight.detach()[~mask] == 0).all()))
            checks.append(_gather_equal(layer.weight.detach()))
    ds.share_weights_(model, ds.ShareConfig(fc_bits=3))
    ddp = DDP(model)  # the trainable tensors are now the codebooks
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    for step in range(3):
        train_steps(ddp, opt, 3, seed=1000 + 100 * rank + step)
        for layer in (model[0], model[2]):
            p = layer.parametrizations.weight
            checks.append(_gather_equal(p.original.detach()))
            checks.append(_gather_equal(p[0].codes))
            checks.append(bool((layer.weight.detach()[~p[0].mask] == 0).all()))
    ds.save(model, os.path.join(out_dir, f"rank{rank}.dsz"))
    with open(os.path.join(out_dir, f"checks{rank}.txt"), "w") as f:
        f.write(",".join(str(int(c)) for c in checks))
    dist.destroy_process_group()


def test_ddp_two_processes_stay_consistent(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        checks = (tmp_path / f"checks{rank}.txt").read_text().split(",")
        assert len(checks) == 36 and all(c == "1" for c in checks), (rank, checks)
    assert (tmp_path / "rank0.dsz").read_bytes() == (tmp_path / "rank1.dsz").read_bytes()

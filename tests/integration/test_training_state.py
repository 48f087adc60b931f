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


class SeqNet(nn.Module):
    """The layer types beyond Linear: embedding, attention, LSTM, GRU, transposed convolution, bilinear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(30, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lstm = nn.LSTM(8, 6, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(12, 5, batch_first=True)
        self.up = nn.ConvTranspose1d(5, 4, 3)
        self.bil = nn.Bilinear(4, 5, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.emb(tokens)
        a, _ = self.attn(e, e, e)
        h, _ = self.lstm(a)
        g, _ = self.gru(h)
        u = self.up(g.transpose(1, 2)).mean(2)
        return self.bil(u, g.mean(1))


def _mlp_batches(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(16, 24, generator=g), torch.randint(0, 5, (16,), generator=g)


def _seq_batches(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, 30, (8, 7), generator=g), torch.randint(0, 3, (8,), generator=g)


MODELS = {"mlp": (make_mlp, _mlp_batches), "seq": (SeqNet, _seq_batches)}


def _steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int, batches) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = batches(g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, which: str) -> None:
    from deepshrink.layers.registry import compressible_weights

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    build, batches = MODELS[which]
    model = build()
    targets = list(compressible_weights(model))
    checks: list[bool] = []
    ds.prune_(model, ds.PruneConfig(sparsity=0.3))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for step in range(3):
        ds.prune_(model, ds.PruneConfig(sparsity=0.3 + 0.2 * step))
        _steps(ddp, opt, 3, 100 * rank + step, batches)  # each rank sees different data
        for t in targets:
            mask = t.module.parametrizations[t.param][0].mask
            weight = getattr(t.module, t.param).detach()
            checks += [_gather_equal(mask.to(torch.uint8)), bool((weight[~mask] == 0).all()), _gather_equal(weight)]
    ds.share_weights_(model, ds.ShareConfig(fc_bits=3, conv_bits=4, kind_bits={"embedding": 3, "recurrent": 3}))
    ddp = DDP(model)  # the trainable tensors are now the codebooks
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    for step in range(3):
        _steps(ddp, opt, 3, 1000 + 100 * rank + step, batches)
        for t in targets:
            p = t.module.parametrizations[t.param]
            weight = getattr(t.module, t.param).detach()
            checks += [_gather_equal(p.original.detach()), _gather_equal(p[0].codes), bool((weight[~p[0].mask] == 0).all())]
    ds.save(model, os.path.join(out_dir, f"rank{rank}.dsz"))
    model.eval()
    with torch.no_grad():
        torch.save(model(batches(torch.Generator().manual_seed(7))[0]), os.path.join(out_dir, f"out{rank}.pt"))
    with open(os.path.join(out_dir, f"checks{rank}.txt"), "w") as f:
        f.write(",".join(str(int(c)) for c in checks))
    dist.destroy_process_group()


@pytest.mark.parametrize(("which", "tensors"), [("mlp", 2), ("seq", 11)])
def test_ddp_two_processes_stay_consistent(tmp_path, which, tensors):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), which), nprocs=2, join=True)
    for rank in (0, 1):
        checks = (tmp_path / f"checks{rank}.txt").read_text().split(",")
        assert len(checks) == 18 * tensors and all(c == "1" for c in checks), (rank, checks)
    assert (tmp_path / "rank0.dsz").read_bytes() == (tmp_path / "rank1.dsz").read_bytes()
    fresh = ds.load(tmp_path / "rank0.dsz", into=MODELS[which][0]()).eval()
    with torch.no_grad():
        out = fresh(MODELS[which][1](torch.Generator().manual_seed(7))[0])
    assert torch.equal(out, torch.load(tmp_path / "out0.pt", weights_only=True))

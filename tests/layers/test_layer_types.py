"""Every common layer type compresses by default: masks hold through training, sharing and fine-tuning work,
files round-trip exactly, ``restore_`` resumes, and the loaded model computes what the compressed one does."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import deepshrink as ds
from deepshrink.layers.registry import compressible_weights


class Wrap(nn.Module):
    """One layer and how to feed it: the output is always a single tensor."""

    def __init__(self, layer: nn.Module, feed: Callable[[nn.Module, torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self._feed = feed
        self.register_buffer("x", x, persistent=False)

    def forward(self) -> torch.Tensor:
        return self._feed(self.layer, self.x)


g = torch.Generator().manual_seed(0)
TOKENS = torch.randint(0, 50, (4, 6), generator=g)
SEQ = torch.randn(3, 5, 8, generator=g)


def _rnn(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x)[0]


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, torch.Tensor], torch.Tensor], torch.Tensor, int]] = {
    # name: (layer factory, feed, input, number of compressed tensors)
    "Embedding": (lambda: nn.Embedding(50, 16), lambda m, x: m(x), TOKENS, 1),
    "EmbeddingBag": (lambda: nn.EmbeddingBag(50, 16, mode="mean"), lambda m, x: m(x), TOKENS, 1),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(4, 6, 3), lambda m, x: m(x), torch.randn(2, 4, 9, generator=g), 1),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2), lambda m, x: m(x), torch.randn(2, 4, 5, 5, generator=g), 1),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(2, 3, 2), lambda m, x: m(x), torch.randn(1, 2, 3, 3, 3, generator=g), 1),
    "RNN": (lambda: nn.RNN(8, 12, num_layers=2, batch_first=True), _rnn, SEQ, 4),
    "LSTM-bidirectional-proj": (lambda: nn.LSTM(8, 12, bidirectional=True, proj_size=5, batch_first=True), _rnn, SEQ, 6),
    "GRU": (lambda: nn.GRU(8, 12, batch_first=True), _rnn, SEQ, 2),
    "MultiheadAttention": (lambda: nn.MultiheadAttention(16, 4, batch_first=True), lambda m, x: m(x, x, x)[0],
                           torch.randn(2, 5, 16, generator=g), 2),
    "MultiheadAttention-kdim-vdim": (lambda: nn.MultiheadAttention(16, 4, kdim=8, vdim=12, batch_first=True),
                                     lambda m, x: m(x, x[..., :8], x[..., :12])[0], torch.randn(2, 5, 16, generator=g), 4),
    "Bilinear": (lambda: nn.Bilinear(6, 6, 5), lambda m, x: m(x, x), torch.randn(4, 6, generator=g), 1),
}


def _build(name: str, seed: int = 0) -> Wrap:
    make, feed, x, _ = CASES[name]
    torch.manual_seed(seed)
    return Wrap(make(), feed, x)


def _train(model: nn.Module, steps: int = 3) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        model().pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_type_compresses_end_to_end(tmp_path, name):
    model = _build(name)
    targets = list(compressible_weights(model))
    assert len(targets) == CASES[name][3], [t.name for t in targets]

    densities = ds.prune_(model, ds.PruneConfig(sparsity=0.7))
    assert len(densities) == len(targets) and all(abs(d - 0.3) < 0.05 for d in densities.values())
    zeros = {t.name: getattr(t.module, t.param).detach() == 0 for t in targets}
    _train(model)
    for t in compressible_weights(model):
        assert bool((getattr(t.module, t.param).detach()[zeros[t.name]] == 0).all()), t.name

    bits = ds.share_weights_(model)
    codes = {t.name: t.module.parametrizations[t.param][0].codes.clone() for t in compressible_weights(model)}
    _train(model)
    copy.deepcopy(model)  # mid-training copies work (an RNN caches computed weights after each forward)
    for t in compressible_weights(model):
        w = getattr(t.module, t.param).detach()
        assert bool((w[zeros[t.name]] == 0).all())
        assert torch.unique(w[w != 0]).numel() <= 2 ** bits[t.name] - 1
        assert torch.equal(t.module.parametrizations[t.param][0].codes, codes[t.name])  # fine-tuning moves centroids only

    model.eval()
    with torch.no_grad():
        expected = model()
    resumed = ds.restore_(_build(name, seed=1), model.state_dict()).eval()
    ds.save(model, tmp_path / "m.dsz")
    fresh = ds.load(tmp_path / "m.dsz", into=_build(name, seed=2)).eval()
    baked = ds.strip_(copy.deepcopy(model))
    for key, t in baked.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], t), key
    # Inference settings: torch's RNNs and separate-projection attention pick another kernel (1 ulp apart)
    # for weights that require grad, even under no_grad; the compressed model's weights do not.
    fresh.requires_grad_(False)
    with torch.no_grad():
        assert torch.equal(fresh(), expected)
        assert torch.equal(resumed(), expected)
    rep = ds.report(tmp_path / "m.dsz")
    assert len(rep.layers) == len(targets)


class TinyLanguageModel(nn.Module):
    """The issue's language model: embeddings, two transformer encoder layers, an LSTM, a transposed conv, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(1000, 64)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0), 2,
                                             enable_nested_tensor=False)
        self.lstm = nn.LSTM(64, 64, batch_first=True)
        self.up = nn.ConvTranspose1d(64, 64, 3, padding=1)
        self.head = nn.Linear(64, 1000)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.emb(t))
        h = self.lstm(h)[0]
        h = self.up(h.transpose(1, 2)).transpose(1, 2)
        return self.head(torch.relu(h))


def test_language_model_compresses_20x_with_defaults(tmp_path):
    torch.manual_seed(0)
    model = TinyLanguageModel()
    dense_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    ds.prune_(model, ds.PruneConfig(sparsity=0.9))
    ds.share_weights_(model)
    size = ds.save(model, tmp_path / "lm.dsz")
    rep = ds.report(tmp_path / "lm.dsz")
    assert rep.dense_bytes == dense_bytes
    assert dense_bytes / size >= 20, (dense_bytes, size, rep.storage)
    fresh = ds.load(tmp_path / "lm.dsz", into=TinyLanguageModel()).eval().requires_grad_(False)
    model.eval()
    t = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fresh(t), model(t))

"""Task file: a small GPT-2 (built from a config, nothing downloaded) trained on text every machine has offline:
the Python standard library's own source, read as bytes. The metric is minus the held-out loss in nats per
byte (higher is better); perplexity is exp(-metric).

    deepshrink compress examples/text_gpt2.py --out runs/examples/text_gpt2.dsz --max-drop 3 --retrain-epochs 2 \
        --finetune-epochs 2          # --max-drop 3: 0.03 nats, perplexity within +3% on validation (README)
    deepshrink export runs/examples/text_gpt2.dsz --task examples/text_gpt2.py --to hf runs/examples/text_gpt2_hf
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
import transformers
from _common import cached_reference
from torch import nn

BLOCK = 128
STEPS_PER_EPOCH = 100


def _corpus() -> torch.Tensor:
    lib = Path(sysconfig.get_paths()["stdlib"])
    text = b"".join(p.read_bytes() for p in sorted(lib.glob("*.py"))[:120])
    return torch.tensor(list(text[: 2_000_000]), dtype=torch.long)


DATA = _corpus()
_split = int(0.9 * len(DATA))
TRAIN, HELD_OUT = DATA[:_split], DATA[_split:]
VALID, TEST = HELD_OUT[: len(HELD_OUT) // 2], HELD_OUT[len(HELD_OUT) // 2 :]


def build() -> nn.Module:
    cfg = transformers.GPT2Config(vocab_size=256, n_positions=BLOCK, n_embd=128, n_layer=2, n_head=4, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def _steps(model: nn.Module, steps: int, lr: float, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(TRAIN) - BLOCK - 1, (32,), generator=g)
        batch = torch.stack([TRAIN[s : s + BLOCK] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


def _metric(model: nn.Module, split: torch.Tensor) -> float:
    """Minus the mean next-byte loss (nats) over consecutive blocks of ``split``."""
    n = (len(split) - 1) // BLOCK
    blocks = split[: n * BLOCK].reshape(n, BLOCK)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, 64):
            total += float(model(input_ids=blocks[i : i + 64], labels=blocks[i : i + 64]).loss) * len(blocks[i : i + 64])
    return -total / n


def model() -> nn.Module:
    return cached_reference("text_gpt2", build, lambda m: _steps(m, 1200, 3e-3))


def train(model: nn.Module, epochs: int) -> None:
    _steps(model, epochs * STEPS_PER_EPOCH, 1e-3)


def validate(model: nn.Module) -> float:
    return _metric(model, VALID[:30_000])


def evaluate(model: nn.Module) -> float:
    return _metric(model, TEST)


def example_input() -> tuple[torch.Tensor]:
    return (TEST[:BLOCK].unsqueeze(0),)

"""``save`` and ``load``: the one bridge between a model and a ``.dsz`` file.

save: model -> compressed tensors (:mod:`deepshrink.compressed`) -> bytes (:mod:`deepshrink.format`).
load: bytes -> compressed tensors -> the model's own storage (dense) or compressed-form modules (sparse).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._memory import release_memory
from .compressed import CompressedTensor, SharedSparse
from .errors import ConfigError, InvalidModelError, ModelMismatchError
from .format.entries import CtxEntry, Entry, RawEntry, SharedEntries, SharedEntry
from .format.reader import Reader
from .format.spec import MAX_CLAIMED_ELEMENTS
from .format.writer import EncodeConfig, encoded_size, write
from .layers.ties import find_parametrization, holders, storage_key
from .transforms.pruning import PruningMask
from .transforms.sharing import ClusteredWeight, SharedWeight

__all__ = ["DTYPE_NAMES", "load", "load_buffer", "save", "saved_size", "to_compressed"]

log = logging.getLogger(__name__)

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8",
    torch.bool: "bool",
}
ZERO_CHUNK = 1 << 22


# (full_name, module, attr, aliases): a persistent tensor as ``_logical_tensors`` finds it.
_Held = tuple[str, nn.Module, str, list[str]]


def _logical_tensors(model: nn.Module) -> list[_Held]:
    """``(full_name, module, attr, aliases)`` for every persistent tensor, parametrized ones by their plain name.

    A tensor held under several names (tied weights) appears once, under its first name; ``aliases``
    are its other names.
    """
    out: dict[int, _Held] = {}
    for mname, module, attr in holders(model):
        if attr in module._non_persistent_buffers_set:
            continue
        full = f"{mname}.{attr}" if mname else attr
        key = storage_key(module, attr)
        if key is None:
            continue
        if key in out:
            out[key][3].append(full)
        else:
            out[key] = (full, module, attr, [])
    return list(out.values())


def _shared_form(name: str, module: nn.Module, attr: str, sw: SharedWeight, cfg: EncodeConfig) -> SharedSparse:
    codebook = module.parametrizations[attr].original.detach().cpu().float().numpy()  # type: ignore[union-attr, index]
    if not np.isfinite(codebook).all():
        raise InvalidModelError(f"layer '{name}': codebook has NaN or Inf; the fine-tuning diverged, lower the learning rate")
    flat_mask = sw.mask.detach().cpu().numpy().reshape(-1)
    flat_codes = sw.codes.detach().cpu().numpy().reshape(-1)
    return SharedSparse.from_mask_codes(flat_mask, flat_codes, codebook, cfg.index_bits, cfg.coder.coder)


def _raw_form(name: str, t: Tensor, aliases: list[str]) -> CompressedTensor:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InvalidModelError(f"tensor '{name}' has NaN or Inf values; fix the model before saving")
    if t.dtype not in DTYPE_NAMES:
        raise ConfigError(f"tensor '{name}' has dtype {t.dtype}; supported: {sorted(DTYPE_NAMES.values())}")
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return CompressedTensor(name, tuple(t.shape), DTYPE_NAMES[t.dtype], raw=data, aliases=tuple(aliases))


@torch.no_grad()
def to_compressed(model: nn.Module, config: EncodeConfig | None = None) -> list[CompressedTensor]:
    """The model's persistent tensors in compressed form: weight-shared layers in relative-index form, the rest raw."""
    return _to_compressed(_logical_tensors(model), config or EncodeConfig())


def _to_compressed(tensors: list[_Held], cfg: EncodeConfig) -> list[CompressedTensor]:
    shared = {n: (m, a, sw) for n, m, a, _ in tensors if (sw := find_parametrization(m, a, SharedWeight)) is not None}
    with ThreadPoolExecutor(max_workers=cfg.threads) as pool:
        forms = dict(zip(shared, pool.map(lambda n: _shared_form(n, *shared[n], cfg), shared), strict=True))
    out = []
    for name, module, attr, aliases in tensors:
        if name in forms:
            sw = shared[name][2]
            out.append(CompressedTensor(name, tuple(sw.mask.shape), "float32", shared=forms[name], aliases=tuple(aliases)))
        else:
            out.append(_raw_form(name, getattr(module, attr), aliases))
    return out


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    config: EncodeConfig | None = None,
    metadata: dict[str, Any] | None = None,
) -> int:
    """Write ``model`` to ``path`` as a ``.dsz`` file; return its size in bytes.

    Weight-shared layers are stored as codebook + entropy-coded cluster and relative-index streams;
    every other tensor (biases, BatchNorm statistics, unshared weights) is stored raw. The file is
    written to a temporary file in the same directory, fsynced and renamed, so a crash mid-save never
    leaves a partial file and never damages an existing one.
    """
    cfg = config or EncodeConfig()
    tensors = _logical_tensors(model)
    forms = _to_compressed(tensors, cfg)
    _warn_unshared(tensors, forms, path)
    size = write(path, forms, cfg, metadata or {})
    weights = sum(int(np.prod(f.shape)) for f in forms)
    del forms
    release_memory(weights)
    return size


def _warn_unshared(tensors: list[_Held], forms: list[CompressedTensor], path: str | os.PathLike[str]) -> None:
    """Say which pruned or clustered layers go into the file raw: only weight sharing stores a layer compressed, and a
    user who pruned and saved would otherwise find out from the file's size."""
    raw = {f.name: f for f in forms if f.raw is not None}
    for name, module, attr, _ in tensors:
        for kind in (PruningMask, ClusteredWeight):
            if name in raw and find_parametrization(module, attr, kind) is not None:
                log.warning("%s: layer '%s' is %s but not weight-shared, so it is stored raw (%d bytes, every zero "
                            "included); call deepshrink.share_weights_(model, ShareConfig(...)) before saving to store "
                            "it compressed", os.fspath(path), name, "pruned" if kind is PruningMask else "clustered",
                            len(raw[name].raw or b""))
                break


def saved_size(model: nn.Module, config: EncodeConfig | None = None, metadata: dict[str, Any] | None = None) -> int:
    """The bytes :func:`save` would write for ``model``, without writing them."""
    cfg = config or EncodeConfig()
    return encoded_size(to_compressed(model, cfg), cfg, metadata or {})


def _targets(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
    """The model's tensors by name, and each one's aliases (other names of the same tied tensor)."""
    out, aliases = {}, {}
    for name, module, attr, names in _logical_tensors(model):
        if parametrize.is_parametrized(module, attr):
            raise ModelMismatchError(
                f"model tensor '{name}' is parametrized (pruning or weight sharing is active); load into a fresh "
                "model, or call deepshrink.strip_(model) first"
            )
        out[name] = getattr(module, attr)
        aliases[name] = names
    return out, aliases


def _mismatches(
    tensors: tuple[Entry, ...], targets: dict[str, Tensor], tied: dict[str, list[str]], strict: bool
) -> list[str]:
    """Why the file's tensors do not fit the model's (names, shapes, dtypes, ties); empty if they fit."""
    problems = []
    alias_owner = {a: n for n, names in tied.items() for a in names}
    for t in tensors:
        dst = targets.get(t.name)
        if dst is None:
            where = f"the model ties it to '{alias_owner[t.name]}'" if t.name in alias_owner else "not in the model"
            problems.append(f"'{t.name}' is in the file but {where}")
        elif list(dst.shape) != list(t.shape) or DTYPE_NAMES.get(dst.dtype) != t.dtype:
            have = f"{DTYPE_NAMES.get(dst.dtype)}{list(dst.shape)}"
            problems.append(f"'{t.name}': file has {t.dtype}{list(t.shape)}, model has {have}")
        elif sorted(t.aliases) != sorted(tied[t.name]):
            problems.append(
                f"'{t.name}': the file ties it to {sorted(t.aliases)}, the model to {sorted(tied[t.name])} "
                "(tie or untie the weights as in the saved model, e.g. tie_word_embeddings)"
            )
    if strict:
        in_file = {n for t in tensors for n in (t.name, *t.aliases)}
        problems += [f"'{n}' is in the model but not in the file" for n in sorted(set(targets) - in_file)]
    return problems


def load(
    path: str | os.PathLike[str], into: nn.Module, strict: bool = True, threads: int = 2, mode: str = "dense"
) -> nn.Module:
    """Load a ``.dsz`` file into ``into`` (a model of the saved architecture); return it.

    Nothing is unpickled and nothing is executed. Names, shapes, dtypes and ties are checked against
    the model, and every section's checksum is verified, before any model tensor is touched. With
    ``strict`` every persistent model tensor must be in the file.

    ``mode="sparse"`` replaces each weight-shared ``nn.Linear`` / ``nn.Conv2d`` by a
    :class:`~deepshrink.runtime.kernels.CompressedLinear` / ``CompressedConv2d`` that computes straight
    from the codebook and sparse indices (inference only); the dense weight is never built.
    """
    return _load(Reader.open(path, _allowance(into)), into, strict, threads, mode)


def load_buffer(
    data: bytes | memoryview, into: nn.Module, strict: bool = True, threads: int = 2, name: str = "<buffer>",
    mode: str = "dense",
) -> nn.Module:
    """:func:`load` from bytes already in memory."""
    return _load(Reader(data, name, _allowance(into)), into, strict, threads, mode)


def _allowance(model: nn.Module) -> int:
    """How many elements a file may claim when loaded into ``model``: what the model holds, at least the default."""
    return max(MAX_CLAIMED_ELEMENTS, sum(t.numel() for t in model.state_dict().values()))


def _staging(dst: Tensor, raw: bool) -> tuple[Tensor | None, np.ndarray]:
    """Where a tensor is decoded (raw: as bytes): straight into its storage when that is contiguous on the CPU."""
    direct = dst.is_contiguous() and dst.device.type == "cpu"
    holder = None if direct else torch.empty(dst.shape, dtype=dst.dtype)
    flat = (dst if direct else holder).detach().reshape(-1)  # type: ignore[union-attr]
    return holder, flat.view(torch.uint8).numpy() if raw else flat.numpy()


def _load(reader: Reader, into: nn.Module, strict: bool, threads: int, mode: str) -> nn.Module:
    if mode not in ("dense", "sparse"):
        raise ConfigError(f"load: mode is {mode!r}; use 'dense' or 'sparse'")
    tensors = reader.header.tensors
    targets, tied = _targets(into)
    problems = _mismatches(tensors, targets, tied, strict)
    if problems:
        raise ModelMismatchError(f"{reader.name} does not fit {type(into).__name__}: " + "; ".join(problems[:10]))
    reader.verify()  # a file that fails here leaves the model as it was
    swaps = _sparse_swaps(into, tensors) if mode == "sparse" else {}
    _decode_into(reader, [t for t in tensors if t.name not in swaps], targets, threads)
    from .runtime.swap import swap_in

    for t, module_name in swaps.values():
        swap_in(into, module_name, reader.shared(t), f"{reader.name}: tensor '{t.name}'")
    release_memory(sum(t.numel for t in tensors))
    return into


def _sparse_swaps(model: nn.Module, tensors: tuple[Entry, ...]) -> dict[str, tuple[SharedEntry | CtxEntry, str]]:
    """Tensor name -> (its entry, module name) for every layer ``mode="sparse"`` replaces."""
    from .runtime.swap import swappable

    out = {}
    for t in tensors:
        # A tied tensor stays dense: its other holders (an embedding, say) need the dense weight.
        if isinstance(t, SharedEntries) and not t.aliases and (module_name := swappable(model, t.name)) is not None:
            out[t.name] = (t, module_name)
    return out


def _decode_into(reader: Reader, order: list[Entry], targets: dict[str, Tensor], threads: int) -> None:
    """Decode entries straight into the model's storage, keeping both cores busy even when one layer dominates.

    Two phases: first every coded stream on its own (and the zeroing of big tensors in chunks), then
    each tensor's scatter (or raw copy).
    """
    order = sorted(order, key=lambda t: -t.numel)
    streams = sorted(((t, key) for t in order if isinstance(t, SharedEntry) for key in ("weights", "index")),
                     key=lambda tk: -tk[0].entries)
    decoded: dict[tuple[str, str], np.ndarray] = {}
    staging = {t.name: _staging(targets[t.name], isinstance(t, RawEntry)) for t in order}

    def decode(tk: tuple[SharedEntry, str]) -> None:
        decoded[(tk[0].name, tk[1])] = reader.stream(*tk)

    def work(t: Entry) -> None:
        holder, view = staging[t.name]
        if isinstance(t, RawEntry):
            view[:] = np.frombuffer(reader.chunk(t.data), dtype=np.uint8)
        else:
            syms = {key: decoded.pop((t.name, key)) for key in ("weights", "index")} if isinstance(t, SharedEntry) else None
            reader.shared(t, syms).scatter_into(view, f"{reader.name}: tensor '{t.name}'")
        if holder is not None:
            with torch.no_grad():
                targets[t.name].copy_(holder)

    chunks = [view[i : i + ZERO_CHUNK] for t in order if isinstance(t, SharedEntries)
              for view in [staging[t.name][1]] for i in range(0, view.size, ZERO_CHUNK)]
    from .codec import _jit  # numba: compiled on first use, not at import

    jobs: list[Callable[[], Any]] = [partial(decode, s) for s in streams] + [partial(_jit.zero_fill, c) for c in chunks]
    if threads > 1 and len(order) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda job: job(), jobs))
            list(pool.map(work, order))
    else:
        for job in jobs:
            job()
        for t in order:
            work(t)


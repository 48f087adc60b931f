"""The ``.dsz`` container: save a compressed model to bytes on disk and load it back, with no pickle.

Layout (full spec in ``docs/format.md``)::

    magic(8) | version u32 | header_len u32 | header_crc32 u32 | header JSON | data area

Every section the header names is ``[offset, length, crc32]`` relative to the data area. The loader
validates every field before it allocates or decodes anything, and raises :class:`FormatError`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._config import config_from_dict, config_to_dict
from .._memory import release_memory
from ..codec.entropy import MAX_ALPHABET, Coder, decode_stream, encode_stream
from ..codec.sparse_index import INDEX_BITS_CHOICES, build_entries, choose_index_bits, coded_bits_estimate, gap_stats
from ..errors import ConfigError, FormatError, ModelMismatchError
from ..layers.ties import holders, storage_key
from ..transforms.sharing import MAX_BITS, SharedWeight

__all__ = ["FORMAT_VERSION", "MAGIC", "CoderChoice", "EncodeConfig", "load", "load_buffer", "read_header", "save"]

log = logging.getLogger(__name__)

MAGIC = b"\x89DSZ\r\n\x1a\n"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sIII")
MAX_HEADER = 16 << 20
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 40

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class CoderChoice(str, Enum):
    """``auto`` codes each stream with whichever coder makes it smallest."""

    AUTO = "auto"
    RANS = "rans"
    HUFFMAN = "huffman"
    PACKED = "packed"


@dataclass
class EncodeConfig:
    """How :func:`save` codes weight-shared layers.

    ``index_bits=None`` picks, per layer, the relative-index width in 2..8 that minimises that layer's
    coded size; an integer fixes it for every layer (the paper used 4 for AlexNet, 5 for VGG-16).
    """

    coder: CoderChoice = CoderChoice.AUTO
    index_bits: int | None = None
    threads: int = 2

    def __post_init__(self) -> None:
        self.coder = CoderChoice(self.coder)
        if self.index_bits is not None and self.index_bits not in INDEX_BITS_CHOICES:
            raise ConfigError(f"EncodeConfig: index_bits is {self.index_bits}; use None or an integer in 2..8")
        if self.threads < 1:
            raise ConfigError(f"EncodeConfig: threads is {self.threads}; it must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncodeConfig:
        return config_from_dict(cls, data)


# ------------------------------------------------------------------------------------------ save
def _logical_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str, list[str]]]:
    """``(full_name, module, attr, aliases)`` for every persistent tensor, parametrized ones by their plain name.

    A tensor held under several names (tied weights) appears once, under its first name; ``aliases``
    are its other names.
    """
    out: dict[int, tuple[str, nn.Module, str, list[str]]] = {}
    for mname, module, attr in holders(model):
        if attr in module._non_persistent_buffers_set:
            continue
        full = f"{mname}.{attr}" if mname else attr
        key = storage_key(module, attr)
        if key in out:
            out[key][3].append(full)  # type: ignore[index]
        else:
            out[key] = (full, module, attr, [])  # type: ignore[index]
    return list(out.values())


def _shared_of(module: nn.Module, attr: str) -> SharedWeight | None:
    if not parametrize.is_parametrized(module, attr):
        return None
    for p in module.parametrizations[attr]:  # type: ignore[union-attr, index]
        if isinstance(p, SharedWeight):
            return p
    return None


class _Sections:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> list[int]:
        ref = [self.size, len(data), zlib.crc32(data)]
        self.chunks.append(data)
        self.size += len(data)
        return ref


def _encode_shared(name: str, module: nn.Module, attr: str, sw: SharedWeight, cfg: EncodeConfig) -> dict[str, Any]:
    codebook = module.parametrizations[attr].original.detach().cpu().float().numpy()  # type: ignore[union-attr, index]
    if not np.isfinite(codebook).all():
        raise ConfigError(f"layer '{name}': codebook has NaN or Inf; the fine-tuning diverged, lower the learning rate")
    k = int(codebook.size)
    flat_mask = sw.mask.detach().cpu().numpy().reshape(-1)
    flat_codes = sw.codes.detach().cpu().numpy().reshape(-1)
    coder = None if cfg.coder is CoderChoice.AUTO else Coder(cfg.coder.value)
    stats = gap_stats(flat_mask, flat_codes, k)
    bits = cfg.index_bits if cfg.index_bits is not None else choose_index_bits(stats, k, coder)
    entries = build_entries(flat_mask, flat_codes, k, bits, stats)
    streams = {}
    for key, syms, alphabet in (("weights", entries.wsym, k + 1), ("index", entries.isym, 1 << bits)):
        if coder is None:
            counts = np.bincount(syms, minlength=alphabet)
            best = min(Coder, key=lambda c: coded_bits_estimate(counts, alphabet, c))
            candidates = [best] if best is not Coder.RANS else [Coder.RANS, Coder.HUFFMAN]
            coded = min(((c, encode_stream(syms, alphabet, c)) for c in candidates), key=lambda t: len(t[1]))
        else:
            coded = (coder, encode_stream(syms, alphabet, coder))
        streams[key] = coded
    return {
        "name": name, "shape": list(sw.mask.shape), "dtype": DTYPE_NAMES[module.parametrizations[attr].original.dtype],  # type: ignore[union-attr, index]
        "encoding": "shared_sparse", "nnz": entries.nnz, "entries": entries.count, "index_bits": bits,
        "clusters": k, "_codebook": codebook.astype("<f4").tobytes(),
        "_streams": {key: (c.value, data) for key, (c, data) in streams.items()},
    }


def _raw_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


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
    with torch.no_grad():
        shared = [(n, m, a, sw) for n, m, a, _ in tensors if (sw := _shared_of(m, a)) is not None]
        with ThreadPoolExecutor(max_workers=cfg.threads) as pool:
            encoded = dict(
                zip([n for n, *_ in shared], pool.map(lambda t: _encode_shared(t[0], t[1], t[2], t[3], cfg), shared), strict=True)
            )
        sections = _Sections()
        entries = []
        for name, module, attr, aliases in tensors:
            if name in encoded:
                e = encoded[name]
                e["codebook"] = sections.add(e.pop("_codebook"))
                for key, (coder, data) in e.pop("_streams").items():
                    e[key] = {"coder": coder, "section": sections.add(data)}
            else:
                t = getattr(module, attr)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ConfigError(f"tensor '{name}' has NaN or Inf values; fix the model before saving")
                if t.dtype not in DTYPE_NAMES:
                    raise ConfigError(f"tensor '{name}' has dtype {t.dtype}; supported: {sorted(DTYPES)}")
                e = {"name": name, "shape": list(t.shape), "dtype": DTYPE_NAMES[t.dtype], "encoding": "raw",
                     "data": sections.add(_raw_bytes(t))}
            if aliases:
                e["aliases"] = aliases
            entries.append(e)
    header = {
        "format": "deepshrink", "version": FORMAT_VERSION, "data_bytes": sections.size,
        "metadata": metadata or {}, "tensors": entries,
    }
    hbytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    blob = PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(hbytes), zlib.crc32(hbytes)) + hbytes
    _atomic_write(Path(path), [blob, *sections.chunks])
    size = len(blob) + sections.size
    del encoded, sections
    release_memory()
    log.info("saved %s: %d bytes, %d tensors", path, size, len(entries))
    return size


def _link_fd(fd: int, target: Path) -> None:
    """Give the anonymous file ``fd`` a name (linkat with AT_SYMLINK_FOLLOW; os.link does not follow)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_symlink_follow = -100, 0x400
    if libc.linkat(at_fdcwd, f"/proc/self/fd/{fd}".encode(), at_fdcwd, os.fsencode(target), at_symlink_follow) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    """Write, fsync, then rename into place.

    On Linux the data goes to an anonymous ``O_TMPFILE`` inode that only gets a name once it is
    complete, so a process killed mid-write leaves nothing behind; elsewhere a named temporary file
    in the same directory is removed on any exception.
    """
    directory = path.parent if str(path.parent) else Path(".")
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)  # type: ignore[attr-defined]
        anonymous = True
    except (AttributeError, OSError):
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        anonymous = False
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
            if anonymous:
                tmp.unlink(missing_ok=True)
                _link_fd(f.fileno(), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------------------------------ header
def _fail(path: str, msg: str) -> FormatError:
    return FormatError(f"{path}: {msg}")


def _int(v: Any, what: str, lo: int, hi: int, path: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _fail(path, f"{what} is {v!r}; expected an integer in [{lo}, {hi}]")
    return v


def _section(ref: Any, what: str, data_bytes: int, path: str) -> tuple[int, int, int]:
    if not isinstance(ref, list) or len(ref) != 3:
        raise _fail(path, f"{what}: section reference must be [offset, length, crc32], got {ref!r}")
    off = _int(ref[0], f"{what} offset", 0, data_bytes, path)
    length = _int(ref[1], f"{what} length", 0, data_bytes - off, path)
    crc = _int(ref[2], f"{what} crc32", 0, 0xFFFFFFFF, path)
    return off, length, crc


def _validate_tensor(t: Any, i: int, data_bytes: int, path: str) -> dict[str, Any]:
    if not isinstance(t, dict):
        raise _fail(path, f"header tensor #{i} is not an object")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(path, f"header tensor #{i} has no valid name")
    what = f"tensor '{name}'"
    shape = t.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise _fail(path, f"{what}: shape must be a list of at most {MAX_DIMS} sizes")
    shape = [_int(s, f"{what} shape entry", 0, MAX_ELEMENTS, path) for s in shape]
    numel = math.prod(shape)
    if numel > MAX_ELEMENTS:
        raise _fail(path, f"{what}: shape {shape} has too many elements")
    if not isinstance(t.get("dtype"), str) or t["dtype"] not in DTYPES:
        raise _fail(path, f"{what}: dtype {t.get('dtype')!r} is not one of {sorted(DTYPES)}")
    enc = t.get("encoding")
    out: dict[str, Any] = {"name": name, "shape": shape, "dtype": t["dtype"], "encoding": enc, "numel": numel}
    if enc == "raw":
        off, length, crc = _section(t.get("data"), f"{what} data", data_bytes, path)
        expected = numel * torch.empty((), dtype=DTYPES[t["dtype"]]).element_size()
        if length != expected:
            raise _fail(path, f"{what}: raw data has {length} bytes, shape {shape} of {t['dtype']} needs {expected}")
        out["data"] = (off, length, crc)
    elif enc == "shared_sparse":
        if t["dtype"] != "float32":
            raise _fail(path, f"{what}: shared_sparse tensors must be float32, not {t['dtype']}")
        k = _int(t.get("clusters"), f"{what} clusters", 1, 1 << MAX_BITS, path)
        bits = _int(t.get("index_bits"), f"{what} index_bits", 1, 16, path)
        nnz = _int(t.get("nnz"), f"{what} nnz", 0, numel, path)
        count = _int(t.get("entries"), f"{what} entries", nnz, numel, path)
        if nnz == 0 and count:
            raise _fail(path, f"{what}: {count} entries but no non-zero weights")
        # Fillers only bridge gaps, so entries can never exceed what the tensor length allows.
        if count > nnz + (numel >> bits):
            raise _fail(path, f"{what}: {count} entries cannot fit {nnz} weights in {numel} positions")
        out.update(clusters=k, index_bits=bits, nnz=nnz, entries=count)
        out["codebook"] = _section(t.get("codebook"), f"{what} codebook", data_bytes, path)
        if out["codebook"][1] != 4 * k:
            raise _fail(path, f"{what}: codebook has {out['codebook'][1]} bytes, {k} clusters need {4 * k}")
        for key, alphabet in (("weights", k + 1), ("index", 1 << bits)):
            s = t.get(key)
            if not isinstance(s, dict) or not isinstance(s.get("coder"), str) or s["coder"] not in {c.value for c in Coder}:
                raise _fail(path, f"{what}: {key} stream needs a coder in {[c.value for c in Coder]}")
            if alphabet > MAX_ALPHABET:
                raise _fail(path, f"{what}: {key} alphabet {alphabet} exceeds {MAX_ALPHABET}")
            out[key] = (Coder(s["coder"]), _section(s.get("section"), f"{what} {key} stream", data_bytes, path), alphabet)
    else:
        raise _fail(path, f"{what}: unknown encoding {enc!r}; this reader knows 'raw' and 'shared_sparse'")
    aliases = t.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise _fail(path, f"{what}: aliases must be a list of non-empty names")
    out["aliases"] = aliases
    return out


def _parse(buf: memoryview, path: str) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    if len(buf) < PREAMBLE.size:
        raise _fail(path, f"file has {len(buf)} bytes, fewer than the {PREAMBLE.size}-byte preamble; not a .dsz file")
    magic, version, hlen, hcrc = PREAMBLE.unpack_from(buf, 0)
    if magic != MAGIC:
        raise _fail(path, "bad magic bytes; not a .dsz file")
    if version != FORMAT_VERSION:
        raise _fail(path, f"format version {version} is not supported (this reader knows {FORMAT_VERSION}); upgrade deepshrink")
    if hlen > MAX_HEADER or PREAMBLE.size + hlen > len(buf):
        raise _fail(path, f"header length {hlen} runs past the end of the {len(buf)}-byte file (truncated?)")
    hbytes = bytes(buf[PREAMBLE.size : PREAMBLE.size + hlen])
    if zlib.crc32(hbytes) != hcrc:
        raise _fail(path, "header checksum mismatch; the file is damaged")
    try:
        header = json.loads(hbytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _fail(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != "deepshrink":
        raise _fail(path, "header is not a deepshrink header")
    if header.get("version") != FORMAT_VERSION:
        raise _fail(path, f"header version {header.get('version')!r} does not match the preamble's {version}")
    data_start = PREAMBLE.size + hlen
    data_bytes = _int(header.get("data_bytes"), "header data_bytes", 0, len(buf), path)
    if data_start + data_bytes != len(buf):
        raise _fail(path, f"file has {len(buf)} bytes but the header describes {data_start + data_bytes} (truncated or extended)")
    raw_tensors = header.get("tensors")
    if not isinstance(raw_tensors, list):
        raise _fail(path, "header has no tensor list")
    tensors = [_validate_tensor(t, i, data_bytes, path) for i, t in enumerate(raw_tensors)]
    names = [n for t in tensors for n in (t["name"], *t["aliases"])]
    if len(set(names)) != len(names):
        raise _fail(path, "header names a tensor twice")
    if not isinstance(header.get("metadata", {}), dict):
        raise _fail(path, "header metadata must be an object")
    return header, tensors, data_start


def _read(path: str | os.PathLike[str]) -> memoryview:
    try:
        with open(path, "rb") as f:
            return memoryview(f.read())
    except OSError as exc:
        raise FormatError(f"{path}: cannot read file ({exc.strerror})") from None


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Parse and validate a file's header; returns ``(header, validated tensor entries)``."""
    buf = _read(path)
    header, tensors, _ = _parse(buf, str(path))
    for t in tensors:
        t["section_bytes"] = _section_bytes(t)
    return header, tensors


def _section_bytes(t: dict[str, Any]) -> dict[str, int]:
    if t["encoding"] == "raw":
        return {"raw": t["data"][1]}
    return {"codebook": t["codebook"][1], "weights": t["weights"][1][1], "index": t["index"][1][1]}


# ------------------------------------------------------------------------------------------ load
def _chunk(buf: memoryview, data_start: int, ref: tuple[int, int, int]) -> memoryview:
    off, length, _ = ref
    return buf[data_start + off : data_start + off + length]


def _checked(buf: memoryview, data_start: int, ref: tuple[int, int, int], what: str, path: str) -> memoryview:
    chunk = _chunk(buf, data_start, ref)
    if zlib.crc32(chunk) != ref[2]:
        raise _fail(path, f"{what}: checksum mismatch; the file is damaged")
    return chunk


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


def _mismatches(tensors: list[dict[str, Any]], targets: dict[str, Tensor], tied: dict[str, list[str]], strict: bool) -> list[str]:
    """Why the file's tensors do not fit the model's (names, shapes, dtypes, ties); empty if they fit."""
    problems = []
    alias_owner = {a: n for n, names in tied.items() for a in names}
    for t in tensors:
        dst = targets.get(t["name"])
        if dst is None:
            where = f"the model ties it to '{alias_owner[t['name']]}'" if t["name"] in alias_owner else "not in the model"
            problems.append(f"'{t['name']}' is in the file but {where}")
        elif list(dst.shape) != t["shape"] or DTYPE_NAMES.get(dst.dtype) != t["dtype"]:
            have = f"{DTYPE_NAMES.get(dst.dtype)}{list(dst.shape)}"
            problems.append(f"'{t['name']}': file has {t['dtype']}{t['shape']}, model has {have}")
        elif sorted(t["aliases"]) != sorted(tied[t["name"]]):
            problems.append(
                f"'{t['name']}': the file ties it to {sorted(t['aliases'])}, the model to {sorted(tied[t['name']])} "
                "(tie or untie the weights as in the saved model, e.g. tie_word_embeddings)"
            )
    if strict:
        in_file = {n for t in tensors for n in (t["name"], *t["aliases"])}
        missing = sorted(set(targets) - in_file)
        problems += [f"'{n}' is in the model but not in the file" for n in missing]
    return problems


# The decoders below run only after load_buffer has verified every section's checksum, so they
# slice sections without checking them again.
def _stream_symbols(buf: memoryview, data_start: int, t: dict[str, Any], key: str, path: str) -> np.ndarray:
    coder, ref, alphabet = t[key]
    what = f"{path}: tensor '{t['name']}' {key} stream"
    return decode_stream(_chunk(buf, data_start, ref), t["entries"], alphabet, coder, what)


def _decode_symbols(
    buf: memoryview, data_start: int, t: dict[str, Any], path: str, syms: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codebook, weight symbols and index symbols of a validated ``shared_sparse`` entry.

    ``syms`` may hold streams already decoded (``load`` decodes all streams in parallel first).
    """
    what = f"tensor '{t['name']}'"
    codebook = np.frombuffer(_chunk(buf, data_start, t["codebook"]), dtype="<f4")
    if not np.isfinite(codebook).all():
        raise _fail(path, f"{what}: codebook holds NaN or Inf")
    syms = dict(syms or {})
    for key in ("weights", "index"):
        if key not in syms:
            syms[key] = _stream_symbols(buf, data_start, t, key, path)
    nnz = int(np.count_nonzero(syms["weights"] != t["clusters"]))
    if nnz != t["nnz"]:
        raise _fail(path, f"{what}: weights stream holds {nnz} non-zero entries, header says {t['nnz']}")
    return codebook.astype(np.float32), syms["weights"], syms["index"]


def decode_tensor(
    buf: memoryview, data_start: int, t: dict[str, Any], dest: np.ndarray, path: str, syms: dict[str, np.ndarray]
) -> None:
    """Decode one validated tensor entry into the flat array ``dest`` (for raw: a byte view).

    For ``shared_sparse`` entries ``dest`` must already hold zeros (``load`` clears big tensors in
    parallel chunks) and ``syms`` its decoded streams.
    """
    if t["encoding"] == "raw":
        dest[:] = np.frombuffer(_chunk(buf, data_start, t["data"]), dtype=np.uint8)
        return
    from ..codec import _jit

    codebook, wsym, isym = _decode_symbols(buf, data_start, t, path, syms)
    if _jit.scatter_entries(wsym, isym, codebook, t["clusters"], dest) != _jit.OK:
        raise _fail(path, f"tensor '{t['name']}': sparse index leaves the tensor or ends on a filler (damaged index stream)")


def decode_positions(buf: memoryview, data_start: int, t: dict[str, Any], path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat positions, cluster codes and codebook of a ``shared_sparse`` entry, without a dense tensor."""
    codebook, wsym, isym = _decode_symbols(buf, data_start, t, path)
    pos = np.cumsum(isym.astype(np.int64) + 1) - 1
    real = wsym != t["clusters"]
    if pos.size and (pos[-1] >= t["numel"] or not real[-1]):
        raise _fail(path, f"tensor '{t['name']}': sparse index leaves the tensor or ends on a filler (damaged index stream)")
    return pos[real], wsym[real].astype(np.uint8), codebook


def load(
    path: str | os.PathLike[str], into: nn.Module, strict: bool = True, threads: int = 2, mode: str = "dense"
) -> nn.Module:
    """Load a ``.dsz`` file into ``into`` (a model of the saved architecture); return it.

    Nothing is unpickled and nothing is executed. Names, shapes and dtypes are checked against the
    model, and every section's checksum is verified, before any model tensor is touched. With
    ``strict`` every persistent model tensor must be in the file.

    ``mode="sparse"`` replaces each weight-shared ``nn.Linear`` / ``nn.Conv2d`` by a
    :class:`~deepshrink.runtime.kernels.CompressedLinear` / ``CompressedConv2d`` that computes straight from the
    codebook and sparse indices (inference only); the dense weight is never built.
    """
    return load_buffer(_read(path), into, strict=strict, threads=threads, name=str(path), mode=mode)


def load_buffer(
    data: bytes | memoryview, into: nn.Module, strict: bool = True, threads: int = 2, name: str = "<buffer>",
    mode: str = "dense",
) -> nn.Module:
    """:func:`load` from bytes already in memory."""
    if mode not in ("dense", "sparse"):
        raise ConfigError(f"load: mode is {mode!r}; use 'dense' or 'sparse'")
    buf = memoryview(data).cast("B")
    _, tensors, data_start = _parse(buf, name)
    release_memory()
    targets, tied = _targets(into)
    problems = _mismatches(tensors, targets, tied, strict)
    if problems:
        raise ModelMismatchError(f"{name} does not fit {type(into).__name__}: " + "; ".join(problems[:10]))
    # Every checksum before any tensor is touched; a file that fails here leaves the model as it was.
    for t in tensors:
        for ref, what in _section_refs(t):
            _checked(buf, data_start, ref, what, name)

    swaps = _sparse_swaps(into, tensors) if mode == "sparse" else {}
    order = sorted((t for t in tensors if t["name"] not in swaps), key=lambda t: -t["numel"])
    # Two phases, so both cores stay busy even when one layer dominates: first every coded stream
    # on its own, then each tensor's scatter (or raw copy) straight into the model's storage.
    streams = sorted(((t, key) for t in order if t["encoding"] == "shared_sparse" for key in ("weights", "index")),
                     key=lambda tk: -tk[0]["entries"])
    decoded: dict[tuple[str, str], np.ndarray] = {}

    staging = {t["name"]: _staging(targets[t["name"]], t["encoding"] == "raw") for t in order}
    from ..codec import _jit

    def decode(tk: tuple[dict[str, Any], str]) -> None:
        decoded[(tk[0]["name"], tk[1])] = _stream_symbols(buf, data_start, tk[0], tk[1], name)

    def clear(chunk: np.ndarray) -> None:
        _jit.zero_fill(chunk)

    def work(t: dict[str, Any]) -> None:
        syms = {key: decoded.pop((t["name"], key)) for key in ("weights", "index") if (t["name"], key) in decoded}
        holder, view = staging[t["name"]]
        decode_tensor(buf, data_start, t, view, name, syms)
        if holder is not None:
            with torch.no_grad():
                targets[t["name"]].copy_(holder)

    chunks = [view[i : i + ZERO_CHUNK] for t in order if t["encoding"] == "shared_sparse"
              for view in [staging[t["name"]][1]] for i in range(0, view.size, ZERO_CHUNK)]
    if threads > 1 and len(order) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda job: job[0](job[1]), [(decode, s) for s in streams] + [(clear, c) for c in chunks]))
            list(pool.map(work, order))
    else:
        for tk in streams:
            decode(tk)
        for c in chunks:
            clear(c)
        for t in order:
            work(t)
    for t, module_name, module in swaps.values():
        _swap_in(into, module_name, module, decode_positions(buf, data_start, t, name))
    release_memory()
    return into


ZERO_CHUNK = 1 << 22


def _staging(dst: Tensor, raw: bool) -> tuple[Tensor | None, np.ndarray]:
    """Where a tensor is decoded (raw: as bytes): straight into its storage when that is contiguous on the CPU."""
    direct = dst.is_contiguous() and dst.device.type == "cpu"
    holder = None if direct else torch.empty(dst.shape, dtype=dst.dtype)
    flat = (dst if direct else holder).detach().reshape(-1)  # type: ignore[union-attr]
    return holder, flat.view(torch.uint8).numpy() if raw else flat.numpy()


def _sparse_swaps(model: nn.Module, tensors: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], str, nn.Module]]:
    """Tensor name -> (its entry, module name, module) for every layer ``mode="sparse"`` replaces."""
    from ..runtime.kernels import supports

    out = {}
    for t in tensors:
        # A tied tensor stays dense: its other holders (an embedding, say) need the dense weight.
        if t["encoding"] != "shared_sparse" or not t["name"].endswith(".weight") or t["aliases"]:
            continue
        module_name = t["name"][: -len(".weight")]
        module = model.get_submodule(module_name)
        if supports(module):
            out[t["name"]] = (t, module_name, module)
    return out


def _swap_in(model: nn.Module, module_name: str, module: nn.Module, decoded: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    from ..runtime.kernels import CompressedConv2d, CompressedLinear, SparseCodebookMatrix

    pos, codes, codebook = decoded
    weight: Tensor = module.weight  # type: ignore[assignment]
    bias: Tensor | None = module.bias  # type: ignore[assignment]
    matrix = SparseCodebookMatrix.from_positions((int(weight.shape[0]), weight[0].numel()), pos, codes, codebook)
    new: nn.Module
    if isinstance(module, nn.Conv2d):
        new = CompressedConv2d(matrix, bias, module)
    else:
        new = CompressedLinear(matrix, bias)
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _section_refs(t: dict[str, Any]) -> list[tuple[tuple[int, int, int], str]]:
    what = f"tensor '{t['name']}'"
    if t["encoding"] == "raw":
        return [(t["data"], what)]
    return [(t["codebook"], f"{what} codebook"), (t["weights"][1], f"{what} weights stream"),
            (t["index"][1], f"{what} index stream")]

"""The context-adaptive coder ("ctx"): a weight-shared tensor's positions and cluster codes in one stream.

Where the order-0 coders see two symbol streams, this one sees the matrix: every position of a
non-empty row gets a significance bit whose probability adapts per context (the column's density in
the rows above, the left neighbour), and each non-zero's cluster code is a tree of adaptive bits
(optionally chosen by the sign of the previous weight in the row). Pruned networks have dead input
columns and output rows and clustered survivors; order-0 coding cannot see that, this coder can.

It costs a decoding step per position, not per non-zero (about 10 ns at 5% density, 50 ns at 30% with
8-bit codes, on this project's machines), so ``auto`` tries it only on tensors of at most
``AUTO_LIMIT`` elements: big layers stay fast with the entry-wise coders. Layout:
``docs/format.md``, section "ctx".
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import FormatError

__all__ = ["AUTO_LIMIT", "CtxParams", "decode", "depth", "encode", "encode_best", "matrix_shape", "swap_axes"]

AUTO_LIMIT = 1 << 20
_MAX_BIT_COST = 16  # bits: -log2(1 / 65536), the most one coded bit can cost
MAX_SHIFTS = range(4, 12)


def _jit():
    from . import _ctx_jit as jit

    return jit


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows and columns the coder walks: ``shape[0]`` by the rest for two or more dimensions, else one row."""
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(shape) < 2:
        return 1, numel
    rows = int(shape[0])
    return rows, (numel // rows if rows else 0)


def swap_axes(positions: np.ndarray, codes: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Flat ``positions`` (sorted) and their ``codes`` as they lie in the tensor with its first two axes exchanged.

    Applied twice it gives back what it was given: the decoder undoes the encoder's swap with it.
    """
    a, b = shape[0], shape[1]
    numel = int(np.prod(shape, dtype=np.int64))
    inner = numel // (a * b) if a * b else 0
    row, rest = np.divmod(np.asarray(positions, dtype=np.int64), b * inner if inner else 1)
    col, k = np.divmod(rest, inner if inner else 1)
    moved = (col * a + row) * inner + k
    # Sorting by the new row alone is enough (a stable sort keeps each row's old order, already right), and
    # a stable sort of 16-bit keys is a radix sort: O(nnz), where sorting ``moved`` costs a log factor.
    order = np.argsort(col.astype(np.uint16) if b <= 1 << 16 else col, kind="stable")
    return moved[order], np.asarray(codes)[order], (b, a, *shape[2:])


def depth(clusters: int) -> int:
    """Bits of a cluster code: enough for ``clusters - 1``."""
    return max(0, int(clusters) - 1).bit_length()


def encode(
    positions: np.ndarray, codes: np.ndarray, negative: np.ndarray, shape: tuple[int, ...], value_ctx: bool, max_shift: int,
    costs: np.ndarray | None = None, mixed: bool = False, swapped: bool = False,
) -> bytes:
    """Code sorted flat ``positions`` and their ``codes``; ``negative[s]`` says whether centroid ``s`` is below zero.

    ``mixed``: the mixed model (each context's probability the mean of a steady and a fast estimate; code
    trees by the quarter of the codebook the previous non-zero's code lies in).

    ``swapped``: walk the tensor with its first two axes exchanged (input-major for a linear or conv weight).

    ``costs`` (3 floats), if given, accumulates the bits spent on row flags, significance bits and code bits.
    """
    jit = _jit()
    if swapped:
        positions, codes, shape = swap_axes(positions, codes, shape)
    rows, cols = matrix_shape(shape)
    d = depth(negative.size)
    bits = rows + rows * cols + positions.size * d
    out = np.zeros(bits * _MAX_BIT_COST // 8 + 64, np.uint8)
    w = jit.ctx_encode(np.ascontiguousarray(positions, dtype=np.int64), np.ascontiguousarray(codes, dtype=np.uint8),
                       np.ascontiguousarray(negative, dtype=np.uint8), rows, cols, d, bool(value_ctx), bool(mixed),
                       jit.shift_table(max_shift), out, costs)
    if out[0] != 0:  # the range coder's first byte is zero by construction
        raise RuntimeError("ctx coder: first byte is not zero")
    return out[1:w].tobytes()


def decode(
    data: bytes | memoryview, shape: tuple[int, ...], negative: np.ndarray, value_ctx: bool, max_shift: int, nnz: int, what: str,
    mixed: bool = False, swapped: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions and cluster codes of the ``nnz`` non-zeros; :class:`FormatError` naming ``what`` on any inconsistency."""
    jit = _jit()
    from ._jit import OK

    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size and raw[-1] == 0:
        raise FormatError(f"{what}: ctx payload ends with a zero byte (writers drop trailing zeros)")
    walked = (shape[1], shape[0], *shape[2:]) if swapped else shape
    rows, cols = matrix_shape(walked)
    positions = np.empty(nnz, np.int64)
    codes = np.empty(nnz, np.uint8)
    status = jit.ctx_decode(raw, rows, cols, depth(negative.size), negative.size, np.ascontiguousarray(negative, dtype=np.uint8),
                            bool(value_ctx), bool(mixed), jit.shift_table(max_shift), nnz, positions, codes)
    if status != OK:
        raise FormatError(f"{what}: ctx payload is damaged (it does not decode to {nnz} weights, status {status})")
    if swapped:
        positions, codes, _ = swap_axes(positions, codes, walked)
    return positions, codes


class CtxParams(NamedTuple):
    """The coding choices a ctx stream's header entry records."""

    mixed: bool
    value_ctx: bool
    swapped: bool
    max_shift: int


def encode_best(positions: np.ndarray, codes: np.ndarray, negative: np.ndarray, shape: tuple[int, ...]) -> tuple[bytes, CtxParams]:
    """The ctx coding of a tensor with the parameters (model, value context, orientation, adaptation rate) that code it
    smallest, and those parameters. The writer stores this; the planner measures its length."""
    tried: dict[tuple[bool, bool, bool, int], bytes] = {}
    # Each orientation's positions once: coding the swapped ones as they are is what ``swapped=True`` does.
    walks = {False: (positions, codes, shape)}
    if len(shape) >= 2:
        walks[True] = swap_axes(positions, codes, shape)

    def size(model: tuple[bool, bool, bool], shift: int) -> int:
        if (*model, shift) not in tried:
            tried[(*model, shift)] = encode(*walks[model[2]][:2], negative, walks[model[2]][2], model[1], shift, mixed=model[0])
        return len(tried[(*model, shift)])

    # (mixed, value context) at the middle rate, the smallest first on a tie; then the same with the axes
    # swapped, which walks a weight input-major (dead inputs become empty rows, a flag each). Swapping costs
    # the reader a sort, so it is taken only where it saves at least 1/256 of the payload.
    def best(swapped: bool) -> tuple[bool, bool, bool]:
        return min(((m, v, swapped) for m in (False, True) for v in (False, True)), key=lambda mvo: size(mvo, 7))

    model = best(False)
    if True in walks and 256 * size(swapped := best(True), 7) <= 255 * size(model, 7):
        model = swapped
    # Size against the adaptation rate is unimodal in every case measured: walk downhill from 7.
    shift = 7
    for step in (-1, 1):
        while shift + step in MAX_SHIFTS and size(model, shift + step) < size(model, shift):
            shift += step
    return tried[(*model, shift)], CtxParams(*model, shift)

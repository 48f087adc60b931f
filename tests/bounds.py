"""Rounding-error bounds for fp32 results, derived from the arithmetic rather than measured on one CPU.

A sum of n terms x_i * w_i computed in floating point with unit roundoff u, in *any* order, with or
without fused multiply-add, with any vector width or thread split, differs from the exact sum by at
most gamma_n * sum |x_i * w_i|, where gamma_n = n u / (1 - n u) (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., eq. 3.5). Adding an exact zero is exact, so n counts the non-zero
products (plus one for a bias). The reference is computed in float64 from the same fp32 inputs: each
product is then exact (24 + 24 significant bits <= 53), and its own error is bounded the same way with
u = 2**-53, so the comparison allows both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

U32 = 2.0**-24
U64 = 2.0**-53


def gamma(n: int, u: float) -> float:
    return n * u / (1.0 - n * u)


def assert_within_sum_bound(actual: torch.Tensor, reference: torch.Tensor, abs_sum: torch.Tensor, n_terms: int, what: str = "") -> None:
    """``|actual - reference| <= (gamma_n(fp32) + gamma_n(fp64)) * abs_sum`` element by element."""
    n = max(int(n_terms), 1)
    bound = (gamma(n, U32) + gamma(n, U64)) * abs_sum
    err = (actual.double() - reference).abs()
    worst = int(torch.argmax(err - bound))
    assert bool((err <= bound).all()), (
        f"{what}: error {float(err.reshape(-1)[worst]):.3g} exceeds the bound {float(bound.reshape(-1)[worst]):.3g} "
        f"for {n} terms at flat index {worst}"
    )


def _terms(w: torch.Tensor, bias: torch.Tensor | None) -> int:
    """Most non-zero products in any one output, plus one for the bias."""
    return int((w.reshape(w.shape[0], -1) != 0).sum(1).max()) + (bias is not None) if w.numel() else 1


def assert_linear_close(actual: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """``actual`` is an fp32 ``x @ w.T + bias`` up to rounding."""
    x64, w64 = x.double(), w.double()
    b64 = None if bias is None else bias.double()
    ref = F.linear(x64, w64, b64)
    abs_sum = F.linear(x64.abs(), w64.abs(), None if b64 is None else b64.abs())
    assert_within_sum_bound(actual, ref, abs_sum, _terms(w, bias), "linear")


def assert_conv2d_close(actual: torch.Tensor, x: torch.Tensor, conv: torch.nn.Conv2d, w: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``actual`` is an fp32 ``conv(x)`` with weight ``w`` up to rounding."""
    kw = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups}
    x64, w64 = x.double(), w.double()
    b64 = None if bias is None else bias.double()
    ref = F.conv2d(x64, w64, b64, **kw)
    abs_sum = F.conv2d(x64.abs(), w64.abs(), None if b64 is None else b64.abs(), **kw)
    assert_within_sum_bound(actual, ref, abs_sum, _terms(w, bias), "conv2d")

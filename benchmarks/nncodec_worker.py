"""NNCodec (MPEG NNC, DeepCABAC) on a dict of tensors, run inside NNCodec's own virtual environment.

Driven by ``benchmarks/vs_nncodec.py`` through a subprocess: NNCodec declares ``numpy<2``, so it lives in
``runs/nncodec-venv`` and never touches the project's environment. Only ``nncodec.nnc_core`` is imported
(the approximator and the DeepCABAC coder): its ``nncodec.nnc`` front end pulls in torchvision, pandas
and OpenCV for data loaders this path never uses, so this script drives the same steps
(``nnc.compression.compress`` / ``decompress``) through ``nnc_core`` directly.

    python benchmarks/nncodec_worker.py IN.npz OUT.json OUT_decoded.npz

``IN.npz`` holds float32 tensors; the ones with two or more dimensions are coded in codebook mode
(``codebook_mode=1``; the automatic mode 2 adds codebook bits to tensor bytes and falls back to uniform
coding, wrongly) at the coarsest quantization step that reproduces every value exactly, searched per tensor
and checked after decoding; the others at NNCodec's default non-weight step. ``OUT.json`` gets the
bitstream sizes (weights alone, and everything; each the smaller of NNCodec's row skipping on and off) and
the step chosen per tensor.

NNCodec's codebook-offset search (one DeepCABAC pass over the tensor per centroid) runs on
``NNCODEC_WORKERS`` processes (default: every CPU), each over a slice of the offsets; the merge keeps
NNCodec's choice (fewest bits, then the lowest offset), so the bytes are the same as one process gives.
"""

from __future__ import annotations

import copy
import hashlib
import json
import multiprocessing
import os
import sys

import numpy as np
from nncodec import nnc_core

QP_DENSITY = 2


def _offset_bits(job: tuple[int, int]) -> tuple[int, int]:
    """(fewest bits, first offset giving them) over offsets ``lo..hi-1``: NNCodec's loop, run over a slice."""
    from nncodec.nnc_core.approximator.codebook import HDSP_OPTS_OFF, deepCABAC

    lo, hi = job
    indices, unary = _SEARCH["indices"], _SEARCH["unary"]
    best: tuple[int, int] | None = None
    for cb in range(lo, hi):
        encoder = deepCABAC.Encoder()
        encoder.initCtxModels(unary, 1)
        indexes = indices - cb
        encoder.encodeLayer(indexes, 0, 0, 0, 0, 0, np.zeros(indexes.shape[0], dtype=np.int32), *HDSP_OPTS_OFF(), 0, 0)
        bits = len(encoder.finish().tobytes())
        if best is None or bits < best[0]:
            best = (bits, cb)
    assert best is not None
    return best


_SEARCH: dict[str, object] = {}


def _parallel_offset(codebook, indices, unary_length_minus1, workers: int):  # type: ignore[no-untyped-def]
    """NNCodec's ``get_codebook_offset`` with its loop over offsets cut into ``workers`` slices run at once.

    Same answer by construction: each slice keeps its first minimum, and the slices are merged the same way.
    """
    if indices.dtype != np.int32:
        return codebook, indices, 0
    _SEARCH.update(indices=indices, unary=unary_length_minus1)  # inherited by the forked workers
    n = len(codebook)
    cuts = [n * i // workers for i in range(workers + 1)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.map(_offset_bits, [(cuts[i], cuts[i + 1]) for i in range(workers) if cuts[i + 1] > cuts[i]])
    offset = min(results)[1]  # fewest bits, then the lowest offset, as NNCodec's strict "<" keeps
    return codebook, indices - offset, offset


def _memoize_codebook_offset(workers: int) -> None:
    """Cache NNCodec's codebook-offset search, which DeepCABAC-codes the tensor once per centroid (255 times at
    8 bits) on every encode; the search is deterministic in (codebook, indices), so the cache changes no byte.
    With ``workers`` > 1 the search runs over slices of the offsets in parallel (same result)."""
    from nncodec.nnc_core.approximator import codebook as cb_module

    search = cb_module.get_codebook_offset
    cache: dict[tuple[bytes, bytes, int], object] = {}

    def cached(codebook, indices, unary_length_minus1):  # type: ignore[no-untyped-def]
        key = (hashlib.sha1(np.ascontiguousarray(codebook).tobytes()).digest(),
               hashlib.sha1(np.ascontiguousarray(indices).tobytes()).digest() + str(indices.dtype).encode(), unary_length_minus1)
        if key not in cache:
            cache[key] = (search(codebook, indices, unary_length_minus1) if workers <= 1
                          else _parallel_offset(codebook, indices, unary_length_minus1, workers))
        book, indexes, offset = cache[key]
        return copy.deepcopy(book), indexes.copy(), offset  # the caller may change what it is given

    cb_module.get_codebook_offset = cached


DEFAULT_NONWEIGHT_QP = -75  # nnc.compression.compress's default


def _encode(params: dict[str, np.ndarray], qps: dict[str, int], row_skip: bool = True) -> bytes:
    model = nnc_core.nnr_model.NNRModel(params)
    approx_data = nnc_core.approximator.init_approx_data(params, model.model_info, qp_density=QP_DENSITY, scan_order=0)
    info = nnc_core.approximator.ApproxInfo(approx_data, model.model_info, "codebook", 1, -38, False, True, 10, 0,
                                            nonweight_qp=DEFAULT_NONWEIGHT_QP, qp_per_tensor=qps).approx_info
    enc_info = {"cabac_unary_length_minus1": 10, "param_opt_flag": True, "partial_data_counter": 0, "general_profile_idc": 1,
                "node_id_present_flag": 1, "device_id": 0, "mps_parent_signalling_enabled_flag": 0,
                "parent_node_id_present_flag": 0, "temporal_context_modeling_flag": 0, "row_skip_enabled_flag": int(row_skip),
                "pre_signalling": 0}
    enc = nnc_core.approximator.approx(info, model.model_info, approx_data, enc_info)
    bitstream, _ = nnc_core.coder.encode(enc_info=enc_info, model_info=model.model_info, approx_data=enc)
    return bytes(bitstream)


def _decode(bitstream: bytes) -> dict[str, np.ndarray]:
    model_info = {"parameter_type": {}, "parameter_dimensions": {}, "parameter_index": {}, "block_identifier": {},
                  "topology_storage_format": None, "topology_compression_format": None,
                  "performance_maps": {"mps": {}, "lps": {}},
                  "performance_map_flags": {k: {} for k in (
                      "mps_sparsification_flag", "lps_sparsification_flag", "mps_pruning_flag", "lps_pruning_flag",
                      "mps_unification_flag", "lps_unification_flag", "mps_decomposition_performance_map_flag",
                      "lps_decomposition_performance_map_flag")}}
    dec = nnc_core.coder.decode(bytearray(bitstream), model_info, hls_stats={}, oob_dict={})
    nnc_core.approximator.rec(dec)
    return {k: np.asarray(v).astype(np.float32).reshape(model_info["parameter_dimensions"][k]) for k, v in dec["parameters"].items()}


def _exact_qp(name: str, w: np.ndarray) -> int:
    """The coarsest step (largest qp) at which NNCodec's codebook mode gives back every value of ``w`` exactly.

    Every value is a multiple of the power of two its lowest set mantissa bit stands for; the smallest of
    those is the coarsest power-of-two step that can work, so the search starts there (qp = 4 log2(step) at
    qp_density 2) and walks finer until a decode matches bit for bit.
    """
    nz = w[w != 0].astype(np.float32)
    if nz.size == 0:
        return 0
    mant, exp = np.frexp(nz.astype(np.float64))  # nz = mant * 2**exp, 0.5 <= |mant| < 1, 24 significant bits
    ints = np.abs(mant * 2.0**24).astype(np.int64)
    tz = np.array([(int(v) & -int(v)).bit_length() - 1 for v in ints])
    step_log2 = int((exp - 24 + tz).min())
    for qp in range(4 * step_log2, 4 * step_log2 - 16, -1):
        got = _decode(_encode({name: w}, {name: qp}))[name]
        if np.array_equal(got, w):
            return qp
    raise RuntimeError(f"{name}: no step reproduces it exactly")


def main() -> int:
    _memoize_codebook_offset(int(os.environ.get("NNCODEC_WORKERS", os.cpu_count() or 1)))
    src, out_json, out_npz = sys.argv[1:4]
    with np.load(src) as z:
        params = {k: np.ascontiguousarray(z[k], dtype=np.float32) for k in z.files}
    weights = [k for k, v in params.items() if v.ndim >= 2]
    qps = {k: _exact_qp(k, params[k]) for k in weights}
    # NNCodec's best: with and without its row skipping (all-zero rows signalled by a flag), the smaller.
    only_weights = min((_encode({k: params[k] for k in weights}, qps, skip) for skip in (True, False)), key=len)
    everything = min((_encode(copy.copy(params), qps, skip) for skip in (True, False)), key=len)
    decoded = _decode(everything)
    exact = {k: bool(np.array_equal(decoded[k], params[k])) for k in weights}
    max_err = {k: float(np.abs(decoded[k] - params[k]).max(initial=0.0)) for k in params if k not in weights}
    np.savez(out_npz, **decoded)
    with open(out_json, "w") as f:
        json.dump({"weights_bytes": len(only_weights), "file_bytes": len(everything), "qp": qps, "weights_exact": exact,
                   "other_max_abs_error": max_err}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

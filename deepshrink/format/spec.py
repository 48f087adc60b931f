"""The ``.dsz`` format's constants (``docs/format.md`` is the normative text)."""

from __future__ import annotations

import struct

import numpy as np

__all__ = [
    "CODEBOOK_DTYPES", "CODER_CODES", "DTYPES", "DTYPE_CODES", "ENCODING_CODES", "FORMAT_VERSION", "HEADER_KEYS", "MAGIC",
    "MAX_CLAIMED_ELEMENTS", "MAX_CLUSTERS", "MAX_DIMS", "MAX_ELEMENTS", "MAX_HEADER", "MAX_INDEX_BITS", "PREAMBLE", "PREAMBLE_V2",
    "RAW_KEYS", "SHARED_KEYS", "STREAM_KEYS", "VERSIONS", "itemsize",
]

MAGIC = b"\x89DSZ\r\n\x1a\n"
# Version 2 (binary header, one checksum, the ctx coder) is what writers make; version 1 (JSON header,
# a checksum per section) still loads, and ``EncodeConfig(version=1)`` still writes it for old readers.
FORMAT_VERSION = 2
VERSIONS = (1, 2)
PREAMBLE = struct.Struct("<8sIII")  # version 1: magic, version, header length, header CRC-32
PREAMBLE_V2 = struct.Struct("<8sII")  # version 2: magic, version, CRC-32 of every later byte
MAX_HEADER = 16 << 20
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 40
# 8-bit codes: 255 centroids plus the filler symbol, or 256 centroids for a layer without fillers.
MAX_CLUSTERS = 256
MAX_INDEX_BITS = 8
# Without a model to bound allocations, a reader refuses headers that claim more elements than this
# in all (16 GiB of float32); loading into a model allows what the model holds.
MAX_CLAIMED_ELEMENTS = 1 << 32

# Version 2's one-byte codes (docs/format.md): tensor dtypes, encodings, stream coders.
DTYPE_CODES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
ENCODING_CODES = ("raw", "shared_sparse", "shared_ctx")
CODER_CODES = ("packed", "huffman", "rans")
# A codebook may be stored at lower precision when every centroid is exactly representable there, or
# ("delta", version 2) sorted and gap-coded in a section of its own length (``codec/codebook.py``).
CODEBOOK_DTYPES = ("float32", "float16", "bfloat16", "delta")

# Every key a version-1 header may hold; any other key is an error (a new key needs a new version).
HEADER_KEYS = {"format", "version", "data_bytes", "metadata", "tensors"}
RAW_KEYS = {"name", "shape", "dtype", "encoding", "data", "aliases"}
SHARED_KEYS = {"name", "shape", "dtype", "encoding", "nnz", "entries", "index_bits", "clusters", "codebook", "weights", "index", "aliases"}
STREAM_KEYS = {"coder", "section"}

# dtype name -> (itemsize, numpy dtype used to view the bytes; bfloat16 has none and stays bytes)
DTYPES: dict[str, tuple[int, np.dtype | None]] = {
    "float32": (4, np.dtype("<f4")), "float64": (8, np.dtype("<f8")), "float16": (2, np.dtype("<f2")),
    "bfloat16": (2, None), "int64": (8, np.dtype("<i8")), "int32": (4, np.dtype("<i4")),
    "int16": (2, np.dtype("<i2")), "int8": (1, np.dtype("i1")), "uint8": (1, np.dtype("u1")), "bool": (1, np.dtype("?")),
}


def itemsize(dtype: str) -> int:
    return DTYPES[dtype][0]

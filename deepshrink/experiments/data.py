"""MNIST-format (IDX) datasets: Fashion-MNIST from Debian's package by default, any MNIST-format
directory with ``--data DIR``, and checksum-verified downloads only when asked for.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, FormatError

__all__ = ["Dataset", "Split", "default_data_dir", "download", "load_mnist_format", "read_idx"]

log = logging.getLogger(__name__)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")

# Where to download from, and the SHA-256 to check. Fashion-MNIST sums are of the decompressed IDX
# bytes (Debian re-compresses the archives, the content is the same); MNIST sums are of the archives.
SOURCES: dict[str, tuple[str, str, dict[str, str]]] = {
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "idx",
        {
            "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "gz",
        {
            "train_images": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train_labels": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "test_images": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "test_labels": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
}

# The data sets the recipes know by name, by the SHA-256 of their decompressed training labels (each published file's).
NAMES = {
    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5": "mnist",
    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9": "fashion-mnist",
}

# Fashion-MNIST training-set statistics; MNIST's differ a little, which only shifts the inputs.
MEAN, STD = 0.2860, 0.3530


@dataclass
class Split:
    images: Tensor  # float32, (N, 1, 28, 28), normalised
    labels: Tensor  # int64, (N,)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, n: int) -> Split:
        return Split(self.images[:n], self.labels[:n])


@dataclass
class Dataset:
    """``source``: where it was read from; ``name``: "mnist" or "fashion-mnist" where its training labels are those
    data sets' own (``NAMES``), else empty."""

    train: Split
    test: Split
    source: str
    name: str = ""


def _idx_bytes(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array, validating its header."""
    raw = _idx_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise FormatError(f"{path}: not an unsigned-byte IDX file (bad magic)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise FormatError(f"{path}: IDX header promises {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims))


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz", directory / stem.replace("-idx", ".idx")):
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"{directory}: no '{stem}' or '{stem}.gz'. Pass --data with a directory of MNIST-format IDX files, "
        "install Fashion-MNIST with 'apt-get install dataset-fashion-mnist', or download with --download."
    )


def default_data_dir() -> Path:
    env = os.environ.get("DEEPSHRINK_DATA")
    return Path(env) if env else DEBIAN_FASHION


def load_mnist_format(directory: str | os.PathLike[str] | None = None) -> Dataset:
    """Load the four IDX files in ``directory`` (default: Debian's Fashion-MNIST)."""
    d = Path(directory) if directory is not None else default_data_dir()
    arrays = {key: read_idx(_find(d, stem)) for key, stem in FILES.items()}

    def split(prefix: str) -> Split:
        images = arrays[f"{prefix}_images"]
        labels = arrays[f"{prefix}_labels"]
        if images.ndim != 3 or images.shape[0] != labels.shape[0]:
            raise FormatError(f"{d}: {prefix} images {images.shape} do not match labels {labels.shape}")
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        return Split((x - MEAN) / STD, torch.from_numpy(labels.astype(np.int64)))

    name = NAMES.get(hashlib.sha256(_idx_bytes(_find(d, FILES["train_labels"]))).hexdigest(), "")
    return Dataset(split("train"), split("test"), str(d), name)


def download(name: str, directory: str | os.PathLike[str]) -> Path:
    """Download ``name`` ('fashion-mnist' or 'mnist') into ``directory``, verifying SHA-256 sums."""
    if name not in SOURCES:
        raise ConfigError(f"unknown dataset '{name}'; choose one of {sorted(SOURCES)}")
    base, kind, sums = SOURCES[name]
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for key, stem in FILES.items():
        target = d / f"{stem}.gz"
        if not target.exists():
            log.info("downloading %s", base + target.name)
            try:
                with urllib.request.urlopen(base + target.name, timeout=60) as r:
                    data = r.read()
            except OSError as exc:
                raise ConfigError(f"cannot download {base + target.name}: {exc}; use --data DIR offline") from None
            digest_of = gzip.decompress(data) if kind == "idx" else data
            digest = hashlib.sha256(digest_of).hexdigest()
            if digest != sums[key]:
                raise FormatError(f"{target.name}: sha256 {digest} does not match the expected {sums[key]}")
            tmp = target.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(target)
    return d

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from deepshrink.errors import DeepShrinkError
from deepshrink.experiments import data as D


def test_fashion_mnist_from_debian(fashion):
    assert len(fashion.train) == 60000 and len(fashion.test) == 10000
    assert tuple(fashion.train.images.shape[1:]) == (1, 28, 28)
    assert sorted(fashion.train.labels.unique().tolist()) == list(range(10))
    assert abs(float(fashion.train.images.mean())) < 0.01  # normalised with the training-set statistics
    assert fashion.name == "fashion-mnist"


def test_a_data_set_is_known_by_its_training_labels_wherever_it_lies(tmp_path):
    mnist = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
    if not (mnist / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip(f"MNIST not in {mnist} (the shared folder)")
    assert D.load_mnist_format(mnist).name == "mnist"
    for stem in D.FILES.values():  # decompressed, under another name: still MNIST
        with gzip.open(mnist / f"{stem}.gz") as src, open(tmp_path / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert D.load_mnist_format(tmp_path).name == "mnist"
    labels = bytearray((tmp_path / D.FILES["train_labels"]).read_bytes())
    labels[-1] = (labels[-1] + 1) % 10  # one label changed: another data set, which no recipe knows
    (tmp_path / D.FILES["train_labels"]).write_bytes(bytes(labels))
    assert D.load_mnist_format(tmp_path).name == ""


def test_plain_idx_directory_and_bad_files(tmp_path):
    for stem in D.FILES.values():
        with gzip.open(D.DEBIAN_FASHION / f"{stem}.gz") as src, open(tmp_path / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    ds = D.load_mnist_format(tmp_path)
    assert len(ds.test) == 10000
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(DeepShrinkError, match="promises"):
        D.load_mnist_format(tmp_path)
    with pytest.raises(DeepShrinkError, match="--data"):
        D.load_mnist_format(tmp_path / "nothing")


def test_download_checks_sha256(tmp_path, monkeypatch):
    # urllib reads file:// URLs, so the checksum logic runs offline against Debian's archives.
    _, kind, sums = D.SOURCES["fashion-mnist"]
    monkeypatch.setitem(D.SOURCES, "fashion-mnist", (D.DEBIAN_FASHION.as_uri() + "/", kind, sums))
    out = D.download("fashion-mnist", tmp_path / "ok")
    assert len(D.load_mnist_format(out).train) == 60000
    bad = dict(sums, test_labels="0" * 64)
    monkeypatch.setitem(D.SOURCES, "fashion-mnist", (D.DEBIAN_FASHION.as_uri() + "/", kind, bad))
    with pytest.raises(DeepShrinkError, match="sha256"):
        D.download("fashion-mnist", tmp_path / "bad")
    assert not (tmp_path / "bad" / "t10k-labels-idx1-ubyte.gz").exists()

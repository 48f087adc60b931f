"""deepshrink's bytes against NNCodec's (MPEG NNC / DeepCABAC), zstd's, xz's and the order-0 bound, on the same weights.

For each model, NNCodec codes exactly the tensors a ``.dsz`` file decodes to: weight tensors in codebook
mode at the coarsest step that reproduces every value (searched per tensor, checked after decoding),
every other tensor at NNCodec's default non-weight step. Both decoded models are evaluated on the test
set where there is one.

    python3 benchmarks/vs_nncodec.py --setup                       # once: NNCodec in runs/nncodec-venv
    python3 benchmarks/vs_nncodec.py --lenet runs/mnist-lenet-5/seed-0/model.dsz=../shared/data/mnist \\
        --lenet runs/fashion-lenet-5/seed-0/model.dsz --paper alexnet --paper vgg16 --json runs/vs_nncodec.json

NNCodec is a ``bench`` extra, never a dependency: it builds from its sdist with g++ and pybind11 into a
virtual environment of its own (it declares ``numpy<2``) and runs there, through ``nncodec_worker.py``.
"""

from __future__ import annotations

import argparse
import json
import lzma
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
VENV = HERE.parent / "runs" / "nncodec-venv"
NNCODEC = "nncodec==2.1.3"


def setup() -> None:
    """Build NNCodec from its sdist into its own venv (torch is not needed there: only nnc_core is imported)."""
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "numpy<2", "pybind11", "setuptools", "wheel"], check=True)
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", "--no-binary", "nncodec", NNCODEC], check=True)


def _ours(path: Path) -> dict[str, float]:
    """Our weight-tensor bytes (codebooks + codes + positions) and the order-0 entropy of the entry-wise streams."""
    from deepshrink.format.entries import CtxEntry, SharedEntry
    from deepshrink.format.reader import Reader
    from deepshrink.reporting.report import order0_bytes

    reader = Reader.open(path)
    reader.verify()
    shared = [t for t in reader.header.tensors if isinstance(t, (SharedEntry, CtxEntry)) and len(t.shape) >= 2]
    return {"ours_weights_bytes": sum(s.length for t in shared for s, _ in t.sections()), "ours_file_bytes": path.stat().st_size,
            "order0_bytes": round(sum(order0_bytes(reader, t) for t in shared))}


def _general(state: dict[str, torch.Tensor]) -> dict[str, int]:
    import zstandard

    raw = b"".join(v.contiguous().numpy().tobytes() for v in state.values())
    return {"zstd_bytes": len(zstandard.ZstdCompressor(level=19).compress(raw)), "xz_bytes": len(lzma.compress(raw, preset=9))}


def _nncodec(state: dict[str, torch.Tensor], tmp: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    src = tmp / "in.npz"
    np.savez(src, **{k: v.numpy().astype(np.float32) for k, v in state.items() if v.is_floating_point()})
    out_json, out_npz = tmp / "nnc.json", tmp / "nnc.npz"
    done = subprocess.run([str(VENV / "bin" / "python"), str(HERE / "nncodec_worker.py"), str(src), str(out_json), str(out_npz)],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nncodec_worker.py failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(out_json.read_text())
    if not all(result["weights_exact"].values()):
        raise RuntimeError(f"NNCodec did not reproduce every weight exactly: {result['weights_exact']}")
    with np.load(out_npz) as z:
        return result, {k: z[k] for k in z.files}


def compare(name: str, path: Path, arch: str, test: object | None) -> dict[str, object]:
    """One model's row; ``test`` is its test split (a deepshrink ``Split``), or None where there is no data."""
    import deepshrink as ds
    from deepshrink.experiments.models import build
    from deepshrink.experiments.train import evaluate

    t0 = time.perf_counter()
    ours_model = ds.load(path, into=build(arch)).eval()
    state = ours_model.state_dict()
    row: dict[str, object] = {"model": name, "file": str(path), **_ours(path), **_general(state)}
    with tempfile.TemporaryDirectory() as tmp:
        nnc, decoded = _nncodec(state, Path(tmp))
    row["nncodec_weights_bytes"], row["nncodec_file_bytes"] = nnc["weights_bytes"], nnc["file_bytes"]
    row["nncodec_qp"], row["nncodec_other_max_abs_error"] = nnc["qp"], nnc["other_max_abs_error"]
    theirs = build(arch).eval()
    theirs.load_state_dict({k: torch.from_numpy(decoded[k]) if k in decoded else v for k, v in state.items()})
    row["accuracy_ours"] = evaluate(ours_model, test) if test is not None else None  # type: ignore[arg-type]
    row["accuracy_nncodec"] = evaluate(theirs, test) if test is not None else None  # type: ignore[arg-type]
    row["seconds"] = time.perf_counter() - t0
    return row


def _paper_file(arch: str, tmp: Path) -> Path:
    from paper_tables import random_pruned

    import deepshrink as ds

    model = random_pruned(arch, 0)
    ds.share_weights_(model, ds.ShareConfig(conv_bits=8, fc_bits=5, iterations=30))
    ds.round_codebooks_(model, torch.float16)  # as the pipeline leaves them (PipelineConfig.codebook_dtype)
    path = tmp / f"{arch}.dsz"
    ds.save(model, path, metadata={"arch": arch})
    return path


def table(rows: list[dict[str, object]]) -> str:
    head = (f"{'model':<26} {'ours W':>10} {'NNC W':>10} {'ours file':>10} {'NNC file':>10} {'order-0':>10} {'zstd':>10} {'xz':>10} "
            f"{'acc ours':>9} {'acc NNC':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = [f"{r[k]:.4f}" if r[k] is not None else "-" for k in ("accuracy_ours", "accuracy_nncodec")]
        lines.append(f"{r['model']:<26} {r['ours_weights_bytes']:>10,} {r['nncodec_weights_bytes']:>10,} {r['ours_file_bytes']:>10,} "
                     f"{r['nncodec_file_bytes']:>10,} {r['order0_bytes']:>10,} {r['zstd_bytes']:>10,} {r['xz_bytes']:>10,} "
                     f"{acc[0]:>9} {acc[1]:>9}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help="build NNCodec into runs/nncodec-venv and exit")
    ap.add_argument("--lenet", action="append", default=[], metavar="FILE.dsz[=DATA_DIR]",
                    help="a reproduce output (its metadata names the arch); DATA_DIR for the test set (default Fashion-MNIST)")
    ap.add_argument("--paper", action="append", default=[], choices=["alexnet", "vgg16"],
                    help="random weights at the paper's densities and bits, as in paper_tables.py")
    ap.add_argument("--json", type=Path, default=Path("runs/vs_nncodec.json"))
    args = ap.parse_args()
    if args.setup:
        setup()
        return 0
    if not (VENV / "bin" / "python").exists():
        print(f"no NNCodec environment at {VENV}: run python3 benchmarks/vs_nncodec.py --setup first")
        return 2
    from deepshrink.experiments.data import load_mnist_format
    from deepshrink.format.reader import read_header

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.lenet:
            file, _, data = spec.partition("=")
            meta = read_header(file).metadata
            test = load_mnist_format(data or None).test
            rows.append(compare(f"{meta['arch']} {Path(data).name if data else 'fashion-mnist'}", Path(file), meta["arch"], test))
            print(table(rows[-1:]), flush=True)
        for arch in args.paper:
            rows.append(compare(f"{arch} (paper densities)", _paper_file(arch, Path(tmp)), arch, None))
            print(table(rows[-1:]), flush=True)
    print()
    print(table(rows))
    ok = all(r["ours_weights_bytes"] <= r["nncodec_weights_bytes"] for r in rows)
    print(f"ours_weights_bytes <= nncodec_weights_bytes for every model: {ok}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"models": rows, "weights_not_larger_everywhere": ok}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

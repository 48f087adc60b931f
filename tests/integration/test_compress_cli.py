"""`deepshrink compress TASK.py` and `deepshrink export` on a tiny task file: results, clear failures, resume."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TASK = '''
import os
import torch
from torch import nn

g = torch.Generator().manual_seed(0)
centers = torch.randn(4, 16, generator=g) * 2
labels = torch.randint(0, 4, (1200,), generator=g)
points = centers[labels] + torch.randn(1200, 16, generator=g)
TRAIN, VALID, TEST = (points[:800], labels[:800]), (points[800:1000], labels[800:1000]), (points[1000:], labels[1000:])

def _acc(m, split):
    with torch.no_grad():
        return float((m(split[0]).argmax(1) == split[1]).float().mean())

def _fit(m, epochs, lr):
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for i in range(0, 800, 50):
            loss = nn.functional.cross_entropy(m(TRAIN[0][i:i + 50]), TRAIN[1][i:i + 50])
            opt.zero_grad(); loss.backward(); opt.step()

def model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    _fit(m, 5, 0.05)
    return m.eval()

def train(m, epochs):
    if os.path.exists(os.path.join(os.path.dirname(__file__), "INTERRUPT")):
        os.remove(os.path.join(os.path.dirname(__file__), "INTERRUPT"))
        raise KeyboardInterrupt
    BODY
    _fit(m, epochs, 0.01)

def validate(m):
    return _acc(m, VALID)

def evaluate(m):
    return EVALUATE

def example_input():
    return (TEST[0][:3],)
'''


def _task(tmp_path: Path, body: str = "pass", evaluate: str = "_acc(m, TEST)", drop: str = "") -> Path:
    text = TASK.replace("BODY", body).replace("EVALUATE", evaluate)
    if drop:
        text = text.replace(f"def {drop}(", f"def _unused_{drop}(")
    path = tmp_path / "task.py"
    path.write_text(textwrap.dedent(text))
    return path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepshrink.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


QUICK = ["--no-progress", "--rounds", "2", "--retrain-epochs", "1", "--finetune-epochs", "1", "--max-drop", "1"]


def test_compress_reports_from_the_file_and_exports(tmp_path):
    task = _task(tmp_path)
    out = tmp_path / "m.dsz"
    proc = _run("compress", str(task), "--out", str(out), *QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["file_bytes"] == out.stat().st_size
    # 1,348 weights: the header and raw biases are most of the file, so 2x already means the weights shrank ~10x.
    assert summary["ratio"] > 2 and summary["metric_after"] >= summary["metric_before"] - 0.05
    assert "metric before" in proc.stdout and "from the file" in proc.stdout
    for fmt, name in (("safetensors", "m.safetensors"), ("onnx", "m.onnx")):
        pytest.importorskip("onnxruntime" if fmt == "onnx" else "safetensors")
        proc = _run("export", str(out), "--task", str(task), "--to", fmt, str(tmp_path / name), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / name).stat().st_size > 0
    assert "onnxruntime matches PyTorch" in proc.stdout


def test_a_result_over_budget_is_written_and_said_to_be(tmp_path):
    # The model as first measured scores 1.0, any change to its weights 0.0: nothing can meet the budget.
    measure = ("    total = sum(float(p.double().sum()) for p in m.parameters())\n"
               "    FIRST.append(total)\n"
               "    return 1.0 if total == FIRST[0] else 0.0\n")
    text = _task(tmp_path).read_text().replace("    return _acc(m, VALID)\n", measure).replace("def validate", "FIRST = []\n\ndef validate")
    task = tmp_path / "task.py"
    task.write_text(text)
    out = tmp_path / "m.dsz"
    proc = _run("compress", str(task), "--out", str(out), *QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and json.loads(out.with_suffix(".json").read_text())["within_budget"] is False
    assert "over budget: validation 1.0000 -> 0.0000" in proc.stdout and "raise --max-drop" in proc.stdout


@pytest.mark.parametrize(
    "kind,kwargs,message",
    [
        ("missing function", {"drop": "evaluate"}, "defines no evaluate()"),
        ("wrong return type", {"evaluate": "'high'"}, "evaluate(model) returned str; it must return a float"),
        ("exception inside train", {"body": "raise ValueError('bad batch')"}, "train() raised ValueError: bad batch"),
    ],
)
def test_bad_task_files_end_with_one_message_and_exit_2(tmp_path, kind, kwargs, message):
    task = _task(tmp_path, **kwargs)
    proc = _run("compress", str(task), "--out", str(tmp_path / "m.dsz"), *QUICK, cwd=tmp_path)
    assert proc.returncode == 2, (kind, proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    verbose = _run("--verbose", "compress", str(task), "--out", str(tmp_path / "v.dsz"), *QUICK, cwd=tmp_path)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_an_interrupted_compress_resumes(tmp_path):
    task = _task(tmp_path)
    (tmp_path / "INTERRUPT").write_text("")
    out = tmp_path / "m.dsz"
    first = _run("compress", str(task), "--out", str(out), *QUICK, cwd=tmp_path)
    assert first.returncode == 130 and "--resume" in first.stderr
    progress = json.loads((tmp_path / "m.dsz.ckpt" / "progress.json").read_text())
    assert progress["stage"] == "started"  # interrupted inside the first round's retraining
    again = _run("compress", str(task), "--out", str(out), *QUICK, cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stdout
    resumed = _run("compress", str(task), "--out", str(out), *QUICK, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads((tmp_path / "m.dsz.ckpt" / "progress.json").read_text())
    assert done["stage"] == "saved" and done["metric_before"] == progress["metric_before"]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [h["stage"] for h in summary["history"]].count("share") >= 1 and summary["file_bytes"] == out.stat().st_size

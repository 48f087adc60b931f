"""``deepshrink compress TASK.py`` and ``deepshrink export``: the user's own model, from their own task file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .task import Task

__all__ = ["add_parsers"]

TASK_HELP = """TASK.py is your own Python file. It defines model() (returns the trained model, or builds it with
WEIGHTS = "file.pt" naming a state_dict to load with weights_only=True) and evaluate(model) -> float
(higher is better). Optional: validate(model) -> float on a validation split (every decision is made on
it; define it, so that the test set only reports), train(model, epochs) (without it the model is
compressed post-training, with no retraining), example_input() (for ONNX export)."""


def _checkpoint_dir(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def _cmd_compress(args: argparse.Namespace) -> int:
    import torch

    from ..pipeline import PipelineConfig, compress
    from ..reporting.report import report

    torch.set_num_threads(args.threads)
    task = Task(args.task)
    model = task.model()
    train = task.train()
    cfg = PipelineConfig(max_drop=args.max_drop / 100, plan_drop=None if args.plan_drop is None else args.plan_drop / 100,
                         rounds=args.rounds, retrain_epochs=args.retrain_epochs, final_retrain_epochs=args.final_retrain_epochs,
                         finetune_epochs=args.finetune_epochs, cluster_epochs=args.cluster_epochs,
                         other_bits=() if args.keep_small_tensors else PipelineConfig().other_bits,
                         target_ratio=args.ratio)
    ckpt = _checkpoint_dir(args.out)
    if ckpt.exists() and not args.resume:
        print(f"{ckpt} holds an earlier run: pass --resume to continue it, or delete it to start over")
        return 2
    print(f"deepshrink compress {args.task} -> {args.out}" + ("" if train else " (no train() in the task: post-training, no retraining)"))
    if not task.has("validate"):
        print("note: no validate(model) in the task; decisions are made on evaluate(model), the reported metric")
    result = compress(model, args.out, task.metric("evaluate"), train=train,
                      validate=task.metric("validate") if task.has("validate") else None,
                      config=cfg, checkpoint_dir=ckpt, progress=not args.no_progress)
    print(report(args.out).table())
    summary: dict[str, Any] = result.to_dict()
    print(f"metric before {result.metric_before:.4f}, after (from the file) {result.metric_after:.4f}, "
          f"change {result.metric_after - result.metric_before:+.4f}")
    print(f"dense {result.dense_bytes:,} B -> {result.file_bytes:,} B: {result.ratio:.1f}x")
    if not result.within_budget:
        fix = "at --ratio (ask for less ratio, or retrain longer)" if args.ratio else \
            "; nothing tried met it, so this is the best found (raise --max-drop, or retrain longer)"
        print(f"over budget: validation {result.validation_before:.4f} -> {result.validation_after:.4f}, more than "
              f"--max-drop allows {fix}")
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export import to_hf, to_onnx, to_safetensors
    from ..serialize import load

    task = Task(args.task)
    model = load(args.file, into=task.model()).eval()
    if args.to == "safetensors":
        print(f"{args.out}: {to_safetensors(model, args.out):,} bytes of safetensors")
    elif args.to == "onnx":
        diff = to_onnx(model, task.example_input(), args.out)
        print(f"{args.out}: ONNX, onnxruntime matches PyTorch within {diff:.2e} (relative)")
    else:
        print(f"{to_hf(model, args.out)}: config.json + model.safetensors; load with from_pretrained")
    return 0


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("compress", help="compress your own model, described by a task file",
                       description=TASK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("task", type=Path, help="your task file (see above)")
    c.add_argument("--out", type=Path, required=True, help="the .dsz file to write (a summary goes next to it as .json)")
    c.add_argument("--max-drop", type=float, default=0.5, metavar="PT",
                   help="how many points (metric x100) below the original the result may end on validate(): the file is "
                        "made as small as that allows (default 0.5); with --ratio, whether the file is within it is reported")
    c.add_argument("--ratio", type=float, metavar="R",
                   help="compress to R times smaller than the dense model instead, losing the least the planner finds at "
                        "that size: --rounds pruning rounds, each planned toward the size and retrained, none undone")
    c.add_argument("--plan-drop", type=float, metavar="PT",
                   help="points the first pruning round may cost before retraining (default 4 x --max-drop); later rounds adapt")
    c.add_argument("--rounds", type=int, default=8, help="pruning rounds at most, each planned, pruned and retrained (default 8)")
    c.add_argument("--retrain-epochs", type=int, default=1, help="epochs of your train() after each pruning round")
    c.add_argument("--final-retrain-epochs", type=int, default=0, help="epochs of your train() after the last round")
    c.add_argument("--finetune-epochs", type=int, default=1, help="epochs of your train() after weight sharing")
    c.add_argument("--cluster-epochs", type=int, default=0,
                   help="epochs of your train() before weight sharing, on a model whose layers compute with their "
                        "weights' nearest centroids (deepshrink.transforms.sharing.ClusteredWeight) while the float weights "
                        "learn: take a smaller step there (the weights only settle into their clusters); kept where the "
                        "shared result measures better (default 0: share the weights as they are)")
    c.add_argument("--keep-small-tensors", action="store_true", help="store biases and norms raw (default: shared where the metric holds)")
    c.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.ckpt/")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_cmd_compress)

    e = sub.add_parser("export", help="decode a .dsz into the task's model and write safetensors, ONNX or a HF directory")
    e.add_argument("file", type=Path)
    e.add_argument("--task", type=Path, required=True, help="the task file whose model() the file was made from")
    e.add_argument("--to", choices=["safetensors", "onnx", "hf"], required=True)
    e.add_argument("out", type=Path)
    e.set_defaults(func=_cmd_export)

"""The ``deepshrink`` command line. The only module that prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DeepShrinkError
from .compress import add_parsers

if TYPE_CHECKING:
    from ..experiments.reproduce import Recipe

__all__ = ["main"]

# The architectures the CLI knows (experiments.models builds them), with one input's shape for bench.
INPUT_SHAPES = {"lenet-300-100": (1, 28, 28), "lenet-5": (1, 28, 28), "alexnet": (3, 224, 224), "vgg16": (3, 224, 224)}
LENETS = [a for a in INPUT_SHAPES if a.startswith("lenet")]
CLASSIFIER_INPUT = {"alexnet": (256 * 6 * 6,), "vgg16": (512 * 7 * 7,)}


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import torch

    from ..experiments.data import download, load_mnist_format
    from ..experiments.reproduce import RECIPES, combine, quick, reproduce

    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.arch]
    data_dir = args.data
    if args.download:
        data_dir = download(args.download, args.data or Path(args.out) / "data")
    data = load_mnist_format(data_dir)
    recipe = _overridden(recipe, args).for_data(data.name)
    if args.quick:
        # A smoke run: a slice of the data and one epoch per stage, to check the whole pipeline fast.
        data = replace(data, train=data.train.subset(args.quick), test=data.test.subset(max(args.quick // 4, 100)))
        recipe = quick(recipe, args.quick)
    out = Path(args.out or f"runs/{args.arch}")
    seeds = _seeds(args.seeds) if args.seeds else [args.seed]
    print(f"deepshrink reproduce {args.arch}: data {data.source} ({len(data.train)} train, of which the last "
          f"{recipe.val_size} validate{f', the {recipe.probe_size} before them probe' if recipe.probe_size else ''}"
          f"{f', the {recipe.holdout_size} before those are held out' if recipe.holdout_size else ''} / "
          f"{len(data.test)} test), {_aim(recipe)}, seeds {seeds}, out {out}")
    summaries = []
    for seed in seeds:
        run_dir = out / f"seed-{seed}" if args.seeds else out
        s = reproduce(recipe, data, run_dir, seed=seed, progress=not args.no_progress)
        summaries.append(s)
        print()
        print(_report_text(run_dir / "model.dsz"))
        print(f"seed {seed}: reference test {s['reference']['test']:.4f} (validation {s['reference']['validation']:.4f}); "
              f"from the file: test {s['final']['test']:.4f} (validation {s['final']['validation']:.4f}); "
              f"drop {s['test_drop_points']:+.2f} pt (paired standard error {s['test_drop_se_points']:.2f} pt, "
              f"{s['test_discordant']} images judged differently){_held(s)}; "
              f"{s['dense_bytes']:,} -> {s['file_bytes']:,} B, {s['ratio']:.1f}x; "
              f"summary {run_dir / 'summary.json'}")
        if not s["within_budget"]:
            print(f"seed {seed}: over budget on the validation split (more than --max-drop below the reference)"
                  + (" at this ratio" if recipe.pipeline.target_ratio else "; nothing tried met it, so this is the best found"))
        _figure(run_dir)
    if args.seeds:
        c = combine(summaries)
        (out / "combined.json").write_text(json.dumps(c, indent=1))
        print()
        print(_combined_table(c))
        print(f"combined: {out / 'combined.json'}")
    return 0


def _aim(recipe: Recipe) -> str:
    p = recipe.pipeline
    unit = "pt of accuracy" if recipe.criterion == "accuracy" else f"% of the {recipe.criterion}"
    budget = f"{100 * p.max_drop:g} {unit}"
    if p.target_ratio is not None:
        return f"to {p.target_ratio:g}x, losing the least it can there (budget {budget} on validation, for the record)"
    return f"as small as it can within {budget} on validation"


def _held(s: dict) -> str:
    return f" (held out: {s['holdout_drop_points']:+.2f} pt)" if "holdout_drop_points" in s else ""


def _overridden(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    """The recipe with the knobs given on the command line; the others stay the recipe's."""
    p = recipe.pipeline
    if args.max_drop is not None:
        p = replace(p, max_drop=args.max_drop / 100)
    if args.share_max_drop is not None:
        p = replace(p, share_max_drop=args.share_max_drop / 100)
    if args.ratio is not None:
        p = replace(p, target_ratio=args.ratio)

    def given(*names: str) -> dict[str, Any]:
        # The flags are named after the fields they set.
        return {n: getattr(args, n) for n in names if getattr(args, n) is not None}

    recipe = replace(recipe, pipeline=replace(p, **given("retrain_epochs", "final_retrain_epochs", "cluster_epochs")),
                     **given("val_size", "probe_size", "holdout_size", "criterion", "retrain_lr", "cluster_lr"))
    if args.share_criterion is not None:
        recipe = replace(recipe, share_criterion=None if args.share_criterion == "criterion" else args.share_criterion)
    return recipe


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes a comma-separated list of integers, got '{text}'") from None


def _combined_table(c: dict) -> str:
    lines = [f"{c['arch']} on {c['data']}: {len(c['runs'])} seeds",
             f"{'seed':>4} {'ref err %':>9} {'err %':>7} {'drop pt':>8} {'se pt':>6} {'ratio':>7} {'bytes':>8} {'min':>5} "
             f"{'budget':>6}"]
    for r in c["runs"]:
        lines.append(f"{r['seed']:>4} {100 * (1 - r['reference_test']):>9.2f} {100 * (1 - r['final_test']):>7.2f} "
                     f"{r['drop_points']:>8.2f} {r['drop_se_points']:>6.2f} {r['ratio']:>6.1f}x {r['file_bytes']:>8,} {r['minutes']:>5.1f} "
                     f"{'met' if r['within_budget'] else 'over':>6}")
    lines.append(f"median: ref err {c['reference_error_pct']['median']:.2f}%, err {c['final_error_pct']['median']:.2f}%, "
                 f"drop {c['drop_points']['median']:.2f} pt, ratio {c['ratio']['median']:.1f}x")
    lines.append(f"worst:  ref err {c['reference_error_pct']['worst']:.2f}%, err {c['final_error_pct']['worst']:.2f}%, "
                 f"drop {c['drop_points']['worst']:.2f} pt, ratio {c['ratio']['worst']:.1f}x")
    if "holdout_drop_points" in c:
        lines.append(f"held out: drop {c['holdout_drop_points']['median']:.2f} pt median, {c['holdout_drop_points']['worst']:.2f} pt worst")
    if c.get("paper_table_1"):
        ref, err, ratio = c["paper_table_1"]
        lines.append(f"paper (Table 1, MNIST): {ref:.2f}% -> {err:.2f}% at {ratio}x")
    return "\n".join(lines)


def _figure(run_dir: Path) -> None:
    try:
        from ..reporting.plot import plot_report
        from ..reporting.report import report

        plot_report(report(run_dir / "model.dsz"), run_dir / "report.png")
        print(f"figure: {run_dir / 'report.png'}")
    except DeepShrinkError as exc:  # matplotlib missing: the table above says it all
        print(f"(no figure: {exc})")


def _report_text(path: Path) -> str:
    from ..reporting.report import report

    return report(path).table()


def _cmd_figure(args: argparse.Namespace) -> int:
    import torch

    from ..experiments.data import load_mnist_format
    from ..experiments.figures import EXPERIMENTS, FigureRun, run_experiment, write_gallery

    torch.set_num_threads(args.threads)
    data = load_mnist_format(args.data)
    if args.quick:
        data = replace(data, train=data.train.subset(args.quick), test=data.test.subset(max(args.quick // 4, 100)))
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    for seed in _seeds(args.seeds) if args.seeds else [args.seed]:
        out = Path(args.out or f"runs/figures/{args.arch}") / (f"seed-{seed}" if args.seeds else "")
        run = FigureRun(args.arch, data, out, seed=seed, epochs=1 if args.quick else args.epochs,
                        reference_epochs=1 if args.quick else None, progress=not args.no_progress)
        results = []
        for name in names:
            r = run_experiment(name, run)
            results.append(r)
            verdict = "holds" if r["claim"]["holds"] else "DOES NOT HOLD"
            print(f"{name:<7} {r['seconds']:6.0f} s  {out / r['png']}  claim {verdict}: {r['claim']['claim']}")
        if args.name == "all":
            print(f"gallery: {write_gallery(out, results)}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..reporting.report import report

    rep = report(args.file)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        print(rep.table())
    if args.plot:
        from ..reporting.plot import plot_report

        plot_report(rep, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import statistics
    import time

    import torch

    from ..experiments.models import build
    from ..format.reader import read_header
    from ..serialize import load

    torch.set_num_threads(args.threads)
    arch = args.arch or read_header(args.file).metadata.get("arch")
    if not arch:
        raise ConfigError(f"{args.file}: no 'arch' in its metadata; pass --arch ({', '.join(INPUT_SHAPES)})")
    dense: torch.nn.Module = load(args.file, into=build(arch).eval())
    sparse: torch.nn.Module = load(args.file, into=build(arch).eval(), mode="sparse")
    shape: tuple[int, ...] = INPUT_SHAPES[arch]
    if arch in CLASSIFIER_INPUT:  # the convolutions stay dense and dominate: time the fc layers, as the paper's Table 8
        dense, sparse = dense.get_submodule("classifier"), sparse.get_submodule("classifier")
        shape = CLASSIFIER_INPUT[arch]
    what = "its classifier (fc layers)" if arch in CLASSIFIER_INPUT else "the whole model"
    from ..runtime import _kernels_jit

    print(f"{args.file}: {arch}, {what}, {args.threads} threads, median of {args.reps} runs; kernels: {_kernels_jit.implementation()}")
    print(f"{'batch':>5} {'dense ms':>10} {'sparse ms':>10} {'speedup':>8}")
    for batch in (1, 64):
        x = torch.randn(batch, *shape)
        times = {}
        with torch.no_grad():
            for name, model in (("dense", dense), ("sparse", sparse)):
                model(x)
                runs = []
                for _ in range(args.reps):
                    t = time.perf_counter()
                    model(x)
                    runs.append(time.perf_counter() - t)
                times[name] = statistics.median(runs) * 1e3
        print(f"{batch:>5} {times['dense']:10.3f} {times['sparse']:10.3f} {times['dense'] / times['sparse']:7.2f}x")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepshrink",
        description="Deep Compression for PyTorch models: prune, share weights, entropy-code. Start with "
        "'deepshrink compress --help' for your own model, 'deepshrink reproduce lenet-300-100' for the paper.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "reproduce", help="reproduce the paper's LeNet results end to end",
        description="Train the reference LeNet (or reuse OUT/reference.pt), then compress it to the recipe's ratio with "
        "the planner: each of 10 rounds measures every layer's sensitivity on the validation split (the last 5,000 "
        "training images), plans per-layer densities of least predicted loss within the target size (the coder's own "
        "byte counts), prunes part of the way there (a cubic ramp) and retrains with distillation (LeNet-300-100: 2 "
        "epochs a round, 20 after the last; LeNet-5: 1 and 10); then bits planned within the size, 3 epochs of "
        "training the weights toward their codebooks (quantization-aware; kept where it measures better), weights "
        "shared and centroids fine-tuned, the file written, loaded into a fresh model and evaluated on the test set. "
        "Example: deepshrink reproduce lenet-5 --data "
        "../shared/data/mnist --seeds 0,1,2")
    r.add_argument("arch", choices=LENETS)
    r.add_argument("--data", type=Path, help="directory of MNIST-format IDX files (default: Debian's Fashion-MNIST)")
    r.add_argument("--download", choices=["fashion-mnist", "mnist"], help="download this dataset (checksummed) first")
    r.add_argument("--out", type=Path, help="output directory (default runs/ARCH); a reference model there is reused")
    r.add_argument("--seed", type=int, default=0, help="one run, written to OUT")
    r.add_argument("--seeds", metavar="0,1,2", help="one run per seed in OUT/seed-N, then the median and worst (OUT/combined.json)")
    r.add_argument("--ratio", type=float, metavar="R",
                   help="compress to R times smaller than the dense model (every byte of the file counted), losing the "
                        "least the planner can at that size (default: the recipe's for the data set: LeNet-300-100 70 on "
                        "MNIST, LeNet-5 175 on MNIST, both 50 on Fashion-MNIST and other data)")
    r.add_argument("--max-drop", type=float, metavar="PCT",
                   help="how much worse the result may be on the validation split, in percent of the recipe's "
                        "criterion: the LeNet recipes decide on the loss, so 5 allows 5%% more cross-entropy than the "
                        "reference's. With a ratio it only says whether the file is within it (within_budget) and bounds "
                        "what sharing the biases and rounding the codebooks may cost (default: the recipe's, 5)")
    r.add_argument("--val-size", type=int, metavar="N",
                   help="the last N training images, on which every decision is made (default: the recipe's, 5000); "
                        "more of them make each decision less noisy and leave fewer to train on")
    r.add_argument("--probe-size", type=int, metavar="N",
                   help="training images (before the validation split) that only the sensitivity probes and plan checks "
                        "measure, so that rounds are accepted on a split the planner never chose by (0: plan on the "
                        "validation split; default: the recipe's)")
    r.add_argument("--holdout-size", type=int, metavar="N",
                   help="training images (before the validation and probe splits) that nothing decides on, measured at "
                        "every step: the drop there is what the decisions' split hides, found without the test set, so "
                        "recipe knobs are compared on it (default: the recipe's, 0)")
    r.add_argument("--retrain-epochs", type=int, metavar="N",
                   help="epochs of retraining after each pruning round (default: the recipe's, 2 for LeNet-300-100, 1 "
                        "for LeNet-5); compare settings on --holdout-size, never on the test set")
    r.add_argument("--retrain-lr", type=float, metavar="LR",
                   help="the learning rate each retraining starts at, decaying to 0 over its epochs (default: the "
                        "recipe's, 0.02; the reference's own, 0.1 / 0.05, rewinds the rate as Renda et al. 2020 do)")
    r.add_argument("--final-retrain-epochs", type=int, metavar="N",
                   help="epochs of the longer retraining after the last round (default: the recipe's, 20 for "
                        "LeNet-300-100, 10 for LeNet-5)")
    r.add_argument("--cluster-epochs", type=int, metavar="N",
                   help="epochs of training the pruned weights toward their codebooks before they are shared "
                        "(quantization-aware: the forward uses each weight's nearest centroid, the float weights learn "
                        "and may change clusters); 0 shares them as they are, as the paper does (default: the recipe's, 3)")
    r.add_argument("--cluster-lr", type=float, metavar="LR",
                   help="the learning rate of that training, decaying to 0 (default: the recipe's, 0.002)")
    r.add_argument("--criterion", choices=["accuracy", "loss", "fidelity"],
                   help="what every decision measures on the validation split, --max-drop the budget in its units: the "
                        "accuracy (5 = 5 pt), the cross-entropy over the reference's, or 'fidelity', the cross-entropy "
                        "against the reference's outputs over the reference's own entropy (default: the recipe's, the loss)")
    r.add_argument("--share-criterion", choices=["fidelity", "criterion"],
                   help="what the sharing stage decides on: 'fidelity', the cross-entropy against the reference's outputs "
                        "on the validation split over the reference's own entropy (the recipes'), or 'criterion', the same "
                        "as every other step; the loss on a few thousand images can miss what sharing costs")
    r.add_argument("--share-max-drop", type=float, metavar="PCT",
                   help="how much worse than the pruned model sharing may leave the metric it decides on, in percent of "
                        "its units (with --share-criterion fidelity: of the reference's entropy; default: sharing stays "
                        "within --max-drop of the reference, like every step)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--quick", type=int, metavar="N", help="smoke run on N training images, one epoch per stage")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_cmd_reproduce)

    f = sub.add_parser("figure", help="rerun one of the paper's experiments (or all) and draw it",
                       description="Each experiment trains, prunes, shares, fine-tunes and codes for real, writes NAME.png and "
                       "NAME.json (every point, and whether the paper's claim holds on this run), and prints a line. 'all' "
                       "also writes index.html, a gallery that opens in a browser without a server.")
    f.add_argument("name", choices=["fig4", "fig5", "fig6", "fig7", "fig8", "table6", "fig11", "all"])
    f.add_argument("--arch", choices=LENETS, default="lenet-300-100")
    f.add_argument("--data", type=Path, help="directory of MNIST-format IDX files (default: Debian's Fashion-MNIST)")
    f.add_argument("--out", type=Path, help="output directory (default runs/figures/ARCH); its reference model is reused")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--seeds", metavar="0,1", help="one run per seed, in OUT/seed-N")
    f.add_argument("--epochs", type=int, default=2, help="retraining epochs at each point (default 2)")
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--quick", type=int, metavar="N", help="smoke run on N training images, one epoch everywhere")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=_cmd_figure)

    i = sub.add_parser("inspect", help="per-layer compression table of a .dsz file")
    i.add_argument("file", type=Path)
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.add_argument("--plot", type=Path, metavar="PNG", help="also draw the table as a figure (needs matplotlib)")
    i.set_defaults(func=_cmd_inspect)

    b = sub.add_parser(
        "bench", help="time a model loaded dense vs sparse (mode='sparse') at batch 1 and 64",
        description="Load FILE twice, dense and with mode='sparse' (layers computed from the codebook and the sparse "
        "index), and print the median time of each at batch 1 and 64 and the speedup. AlexNet and VGG-16 time their "
        "classifier, as the paper's Table 8; the LeNets the whole model. Example: deepshrink bench runs/reproduce/model.dsz",
    )
    b.add_argument("file", type=Path, help="a .dsz file written by deepshrink for one of the built-in architectures")
    b.add_argument("--arch", choices=list(INPUT_SHAPES), help="default: from the file's metadata")
    b.add_argument("--threads", type=int, default=2, help="torch and numba threads (default 2)")
    b.add_argument("--reps", type=int, default=20, help="timed runs per model and batch; the median is reported (default 20)")
    b.set_defaults(func=_cmd_bench)
    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("deepshrink: interrupted; `deepshrink compress ... --resume` continues after the last finished stage", file=sys.stderr)
        return 130
    except DeepShrinkError as exc:
        if args.verbose:
            traceback.print_exception(exc)
        print(f"deepshrink: error: {exc}" + ("" if args.verbose else " (--verbose shows the traceback)"), file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = {"tqdm": "experiments", "matplotlib": "plot", "scipy": "bench"}.get(str(exc.name).split(".")[0])
        if extra is None:
            raise
        print(f"deepshrink: error: this command needs {exc.name}: pip install 'deepshrink[{extra}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

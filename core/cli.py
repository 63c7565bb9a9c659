"""The ``lora-studio`` command line.  Subcommands grow with the engine.

* ``demo`` — a self-contained engine demo on a tiny model (no downloads).
* ``describe`` — the layer tree of a model built on the meta device, with what a
  LoRA config would target and add.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import __version__
from .config import ALL_LINEAR, LoraConfig


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lora-studio`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, OSError) as exc:  # user errors: a clear message, no stack trace
        print(f"lora-studio {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-studio",
        description="LoRA Studio: fine-tune PyTorch models with LoRA. The engine, from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"lora-studio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a short engine demo on a tiny built-in model (offline, CPU, seconds)")
    demo.add_argument("--steps", type=int, default=150, help="training steps (default 150)")
    demo.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    demo.set_defaults(run=_run_demo)

    desc = sub.add_parser(
        "describe",
        help="show a model's layer tree (built on the meta device: no weights allocated)",
        description="MODEL is torchvision:NAME (e.g. torchvision:resnet18) or transformers:ID_OR_FOLDER.",
    )
    desc.add_argument("model", help="torchvision:NAME or transformers:HUB_ID_OR_LOCAL_FOLDER")
    desc.add_argument("--targets", default=ALL_LINEAR, help="comma-separated names, a regex, or all-linear")
    desc.add_argument("--regex", action="store_true", help="treat --targets as one regular expression")
    desc.add_argument("--rank", type=int, default=8, help="LoRA rank for the preview (default 8)")
    desc.add_argument("--depth", type=int, default=3, help="tree depth to print (default 3)")
    desc.set_defaults(run=_run_describe)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_engine_demo

    run_engine_demo(steps=args.steps, rank=args.rank, log=print)
    return 0


def _run_describe(args: argparse.Namespace) -> int:
    from .counting import count_parameters
    from .inspect import describe
    from .meta_models import build_on_meta
    from .target_matching import preview_targets

    targets = args.targets if (args.regex or args.targets == ALL_LINEAR) else args.targets.split(",")
    config = LoraConfig(r=args.rank, targets=targets)
    model = build_on_meta(args.model)
    start = time.perf_counter()
    tree = describe(model, config)
    elapsed = time.perf_counter() - start
    for node in tree.walk():
        depth = node.name.count(".") + 1 if node.name else 0
        if depth > args.depth:
            continue
        mark = f"  [LoRA r={node.rank}, +{node.added_parameters:,}]" if node.targeted else ""
        print(f"{'  ' * depth}{node.name or '(model)'}  {node.type_name}  {node.total_parameters:,}{mark}")
    added = sum(n.added_parameters for n in tree.walk())
    targeted = sum(n.targeted for n in tree.walk())
    print(f"\n{count_parameters(model).total:,} parameters; {targeted} layers targeted, adding {added:,} "
          f"({100 * added / max(tree.total_parameters, 1):.3f}%); described in {elapsed * 1000:.0f} ms")
    error = preview_targets(model, config).error
    if error:  # the tree is still shown, so the user can pick valid names from it
        print(f"lora-studio describe: error: {error}", file=sys.stderr)
        return 1
    return 0

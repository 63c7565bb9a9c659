"""The ``lora-studio`` command line: the same engine the window drives, headless.

* ``train RUN.toml`` — run a training config; ``resume RUN_DIR`` — continue (or extend) it.
* ``inspect MODEL`` — a model's layer tree with counts (built on the meta device);
  ``describe`` is the same command under its first name.
* ``export RUN_DIR --adapter OUT | --merged OUT`` — the trained adapter (PEFT format) or a merged model.
* ``demo digits|text`` — the built-in offline demos.

Exit codes scripts can trust: 0 done, 1 the run failed (NaN, out of memory, an
error), 2 a bad config, data or argument, 130 cancelled with Ctrl-C (a checkpoint
was written first; ``resume`` continues it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .adapter.config import ALL_LINEAR, LoraConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lora-studio`` console script (and of ``python -m lora_studio.core``)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        return args.run(args)
    except (ValueError, OSError) as exc:  # user errors: a clear message, no stack trace
        print(f"lora-studio {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-studio",
        description="LoRA Studio: fine-tune PyTorch models with LoRA. The engine, from the command line.",
        epilog="Exit codes: 0 done, 1 the run failed, 2 bad config/data/arguments, 130 cancelled (Ctrl-C). "
        "Scale out: torchrun --nproc_per_node N -m lora_studio.core train RUN.toml",
    )
    parser.add_argument("--version", action="version", version=f"lora-studio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train the run a RUN.toml describes",
                           description="Train the run RUN.toml describes; progress on stderr, a summary on stdout.")
    train.add_argument("config", help="the run config (TOML)")
    train.add_argument("--output", help="override output.dir")
    train.add_argument("--max-steps", type=int, help="override training.max_steps")
    train.add_argument("--device", help="override training.device (auto, cpu, cuda, cuda:N, mps)")
    train.add_argument("--overwrite", action="store_true", help="start afresh in an output folder that holds a run")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_run_train)

    resume = sub.add_parser("resume", help="continue a run from its newest checkpoint (or extend it)",
                            description="Continue the run in RUN_DIR exactly where its newest checkpoint left it.")
    resume.add_argument("run_dir", help="the run folder (holds run.toml and checkpoints/)")
    resume.add_argument("--extra-steps", type=int, default=0, help="train this many steps past the run's end")
    resume.add_argument("--quiet", action="store_true", help="no progress bar")
    resume.set_defaults(run=_run_resume)

    for name in ("inspect", "describe"):
        desc = sub.add_parser(
            name,
            help="show a model's layer tree with counts (meta device: no weights allocated)"
            + (" — same as inspect" if name == "describe" else ""),
            description="MODEL is torchvision:NAME, transformers:ID_OR_FOLDER, python:FILE.py:FUNCTION, "
            "demo:digits|text, or a RUN.toml (its model and LoRA config).",
        )
        desc.add_argument("model", help="torchvision:NAME, transformers:ID_OR_FOLDER, python:FILE.py:FN, demo:NAME "
                                        "or RUN.toml")
        desc.add_argument("--task", help="transformers: image-classification, sequence-classification or causal-lm "
                                         "(default: the bare backbone)")
        desc.add_argument("--targets", default=ALL_LINEAR, help="comma-separated names, a regex, or all-linear")
        desc.add_argument("--regex", action="store_true", help="treat --targets as one regular expression")
        desc.add_argument("--rank", type=int, default=8, help="LoRA rank for the preview (default 8)")
        desc.add_argument("--depth", type=int, default=3, help="tree depth to print (default 3)")
        desc.set_defaults(run=_run_inspect)

    export = sub.add_parser("export", help="write a run's adapter (PEFT format) or a merged model",
                            description="Export the trained adapter of RUN_DIR, or merge it into the base and "
                            "write the merged model (safetensors, or a transformers folder).")
    export.add_argument("run_dir", help="the run folder")
    what = export.add_mutually_exclusive_group(required=True)
    what.add_argument("--adapter", metavar="OUT", help="write the adapter (PEFT format) to this folder")
    what.add_argument("--merged", metavar="OUT", help="write the merged model to this folder")
    export.add_argument("--which", choices=("final", "best"), default="final",
                        help="the final weights (newest checkpoint) or the best evaluation's adapter")
    export.add_argument("--precision", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="merged model precision (default float32)")
    export.add_argument("--checksum", action="store_true",
                        help="record the merged weights' SHA-256 in the export's sidecar (plain models; "
                             "costs about 2.5x the write itself)")
    export.set_defaults(run=_run_export)

    demo = sub.add_parser("demo", help="run a built-in demo offline on a CPU (digits: seconds; text: about a minute)",
                          description="digits: recover a rotated-digit domain with LoRA; text: topic classification "
                          "with the pretrained MiniLM encoder.")
    demo.add_argument("name", nargs="?", default="digits", choices=("digits", "text"), help="which demo (default digits)")
    demo.add_argument("--steps", type=int, help="training steps (default: the demo's own)")
    demo.add_argument("--output", help="run folder (default: a temporary folder)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=_run_demo)
    return parser


# -- train / resume / demo ---------------------------------------------------------------------
def _run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from .run_config import RunConfig
    from .training import train

    config = RunConfig.load(args.config)
    if args.output or args.overwrite:
        config = config.replace(output=dataclasses.replace(
            config.output, dir=args.output or config.output.dir, overwrite=args.overwrite or config.output.overwrite))
    if args.max_steps is not None or args.device:
        config = config.replace(training=dataclasses.replace(
            config.training, max_steps=args.max_steps or config.training.max_steps,
            device=args.device or config.training.device))
    return _drive(lambda on_event, cancel: train(config, on_event, cancel), args.quiet)


def _run_resume(args: argparse.Namespace) -> int:
    from .training import resume_run

    return _drive(lambda on_event, cancel: resume_run(args.run_dir, on_event, cancel, extra_steps=args.extra_steps),
                  args.quiet)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    output = args.output or tempfile.mkdtemp(prefix=f"lora-studio-demo-{args.name}-")
    print(f"demo {args.name}: training in {output} ...")
    outcome: dict = {}

    def run(on_event, cancel):
        outcome.update(run_demo(args.name, output_dir=output, steps=args.steps, on_event=on_event, cancel=cancel))
        return outcome["result"]

    code = _drive(run, args.quiet)
    before, after = outcome.get("before"), outcome.get("after")
    if before and after:
        if args.name == "digits":
            print(f"accuracy on rotated digits: base model {before['accuracy']:.1%} -> with LoRA "
                  f"{after['accuracy']:.1%}")
        else:
            print(f"validation loss {before['loss']:.3f} -> {after['loss']:.3f}; accuracy "
                  f"{before['accuracy']:.1%} -> {after['accuracy']:.1%}")
    return code


def _drive(start, quiet: bool) -> int:
    """Run ``start(on_event, cancel)`` with a progress bar; Ctrl-C cancels cleanly (twice: at once)."""
    from .training import CancelToken, Failed
    from .training.progress import ProgressPrinter

    cancel = CancelToken()
    printer = ProgressPrinter(enabled=not quiet and os.environ.get("RANK", "0") == "0")

    def on_interrupt(signum, frame):  # first Ctrl-C: stop after this step, with a checkpoint
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()
        print("\ncancelling after this step (Ctrl-C again to abort now) ...", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_interrupt) if _main_thread() else None
    failure = None

    def on_event(event) -> None:
        nonlocal failure
        printer.show(event)
        if isinstance(event, Failed):
            failure = event

    try:
        result = start(on_event, cancel)
    finally:
        printer.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if result.status == "failed":
        message = failure.message if failure else result.error
        print(f"lora-studio: error: {message}", file=sys.stderr)
        return EXIT_USAGE if failure is not None and failure.kind in ("config", "data") else EXIT_FAILED
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        printer.summary(result)
    return EXIT_CANCELLED if result.status == "cancelled" else EXIT_OK


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# -- inspect -------------------------------------------------------------------------------------
def _run_inspect(args: argparse.Namespace) -> int:
    from .adapter.counting import count_parameters
    from .adapter.describe import describe
    from .adapter.target_matching import preview_targets

    targets = args.targets if (args.regex or args.targets == ALL_LINEAR) else args.targets.split(",")
    config = LoraConfig(r=args.rank, targets=targets)
    model, config = _inspected_model(args, config)
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
        print(f"lora-studio {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _inspected_model(args: argparse.Namespace, config: LoraConfig):
    from .models import build_on_meta, load_model

    if args.model.endswith(".toml"):
        from .data import read_label_names
        from .run_config import RunConfig

        run = RunConfig.load(args.model)
        labels = read_label_names(run.data)
        loaded = load_model(run.model, num_classes=len(labels) if labels else None, label_names=labels,
                            data_kind=run.data.kind, meta=True)
        return loaded.model, run.lora
    return build_on_meta(args.model, task=args.task), config


# -- export --------------------------------------------------------------------------------------
def _run_export(args: argparse.Namespace) -> int:
    from .disk.adapter_folder import save_adapter
    from .disk.merged_export import export_merged
    from .training import load_run_config
    from .training.trained_run import load_trained_run

    run_dir = Path(args.run_dir)
    config = load_run_config(run_dir)
    if config.training.mode == "full" and args.adapter:
        raise ValueError(f"{run_dir} is a full fine-tuning run: it has no adapter; use --merged")
    loaded = load_trained_run(run_dir, args.which)
    if args.adapter:
        path = save_adapter(loaded.model, args.adapter, base_model_name_or_path=loaded.name_or_path)
        print(f"adapter written to {path}")
        return EXIT_OK
    result = export_merged(loaded.model, args.merged, precision=args.precision, tokenizer=loaded.tokenizer,
                           checksum=args.checksum)
    print(f"merged model ({result.kind}, {result.precision}) written to {result.path}")
    return EXIT_OK

"""The ``lora-studio`` command line: the same engine the window drives, headless.

* ``train RUN.toml`` — run a training config; ``resume RUN_DIR`` — continue (or extend) it.
  With ``training.processes`` (or ``--processes``) N > 1 either command launches N processes under
  torchrun itself (``launch_processes``) and shows rank 0's progress; under a torchrun started by
  hand (``WORLD_SIZE`` set) the process trains as one of its ranks.
* ``inspect MODEL`` — a model's layer tree with counts (built on the meta device);
  ``describe`` is the same command under its first name.
* ``export RUN_DIR --adapter OUT | --merged OUT | --gguf OUT.gguf | --gguf-adapter OUT.gguf`` — the trained
  adapter (PEFT format), a merged model, or either as a llama.cpp GGUF file;
  ``push RUN_DIR OWNER/NAME [--merged] [--private]`` — the same to the Hugging Face Hub, with a model card;
  ``export ADAPTER_FOLDER --merged OUT`` merges any one adapter folder (ours, PEFT's, a combined one) into its base.
* ``predict PATH INPUT...`` — a trained classifier on texts or images (a run folder, an adapter
  folder, ours or PEFT's, or a merged export), ``--base`` beside its base model.
* ``generate PATH PROMPT`` — a trained language model continues a prompt, streamed; ``--base`` too.
* ``demo digits|text|story|chat`` — the built-in offline demos.
* ``adapters list FOLDER...`` — one line per adapter folder (ours or PEFT's; a run folder lists its
  adapters); ``adapters show FOLDER`` — everything about one (``--json``).
* ``combine BASE_SPEC A B ... --weights 0.5,0.5 --method ties --density 0.5 --out DIR`` — load the
  adapter folders onto the base (BASE_SPEC as ``inspect`` takes it), combine them (PEFT's
  ``add_weighted_adapter`` methods; trained heads, ``modules_to_save``, combined by their changes)
  and save the result in PEFT's format.

Exit codes scripts can trust: 0 done, 1 the run failed (NaN, out of memory) or an
unexpected error (one line on stderr naming the report file that holds its traceback;
``LORA_STUDIO_DEBUG=1`` raises it instead), 2 a bad config, data, file or argument, 130
cancelled with Ctrl-C (a checkpoint was written first; ``resume`` continues it;
``predict`` prints the inputs done so far, ``generate`` the text so far; a second
Ctrl-C aborts at once, also with 130).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .adapter.config import ALL_LINEAR, LoraConfig
from .demo import DEMOS
from .disk import write_error_report
from .inference.generation import GenerationSettings

GENERATION_DEFAULTS = GenerationSettings()

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
EXIT_CODES_TEXT = ("Exit codes: 0 done; 1 the run failed, or an unexpected error (its traceback goes to a report "
                   "file named on stderr; LORA_STUDIO_DEBUG=1 raises it instead); 2 bad config, data, file or "
                   "arguments; 130 cancelled (Ctrl-C; a second Ctrl-C aborts at once).")
DEBUG_ENV = "LORA_STUDIO_DEBUG"  # set to 1: unexpected errors raise with their traceback (for developers)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lora-studio`` console script (and of ``python -m lora_studio.core``).

    Returns the exit code (module docstring): a user's mistake is one ``error:`` line and 2; any
    other exception one line naming the report file its traceback went to, and 1 (``LORA_STUDIO_DEBUG=1``
    lets it raise instead); a Ctrl-C outside a run 130.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    command = " ".join(c for c in (args.command, getattr(args, "adapters_command", None)) if c)
    try:
        return args.run(args)
    except (ValueError, OSError) as exc:  # user errors: a clear message, no stack trace
        if debugging():
            raise
        print(f"lora-studio {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a command with no Ctrl-C handler of its own (inspect, export, ...)
        print(f"\nlora-studio {command}: cancelled (Ctrl-C)", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # a bug or a library's surprise: one line for the user, the traceback to a file
        if debugging():
            raise
        path = write_error_report(traceback.format_exc(), _report_folder(args), argv)
        print(f"lora-studio {command}: error: unexpected {type(exc).__name__}: {_first_line(exc)}; "
              f"{_report_text(path)}", file=sys.stderr)
        return EXIT_FAILED


def debugging() -> bool:
    """Whether ``LORA_STUDIO_DEBUG`` asks for raw tracebacks (any value but empty or 0)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _report_text(path: Path | None) -> str:
    if path is None:
        return f"no report file could be written; run again with {DEBUG_ENV}=1 for the traceback and please file it"
    return f"the full report is in {path}; please file it"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _report_folder(args: argparse.Namespace) -> Path | None:
    """Where an unexpected error's report goes: the run folder the command works on, when there is one."""
    output = getattr(args, "report_dir", None)  # train and demo: the run folder, once it exists
    if output and Path(output).is_dir():
        return Path(output)
    for candidate in (getattr(args, "run_dir", None), getattr(args, "path", None)):  # only a run folder's
        if candidate and (Path(candidate) / "run.toml").is_file():
            return Path(candidate)
    return None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-studio",
        description="LoRA Studio: fine-tune PyTorch models with LoRA. The engine, from the command line.",
        epilog=EXIT_CODES_TEXT + " Scale out: training.processes = N (or train --processes N) launches N processes "
        "under torchrun; torchrun --nproc_per_node N -m lora_studio.core train RUN.toml by hand works too.",
    )
    parser.add_argument("--version", action="version", version=f"lora-studio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train the run a RUN.toml describes",
                           description="Train the run RUN.toml describes; progress on stderr, a summary on stdout.")
    train.add_argument("config", help="the run config (TOML)")
    train.add_argument("--output", help="override output.dir")
    train.add_argument("--max-steps", type=int, help="override training.max_steps")
    train.add_argument("--device", help="override training.device (auto, cpu, cuda, cuda:N, mps)")
    train.add_argument("--processes", type=_count(1), help="override training.processes: N > 1 trains in N "
                       "processes launched under torchrun (GPUs 0..N-1 with device cuda, CPU processes with cpu)")
    train.add_argument("--overwrite", action="store_true", help="start afresh in an output folder that holds a run")
    train.add_argument("--resume", action="store_true", help="continue the run in output.dir from its newest "
                       "checkpoint with this config (what `resume RUN_DIR` does with the folder's own)")
    train.add_argument("--extra-steps", type=_count(0), default=0,
                       help="with --resume: train this many steps past the run's end")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_run_train)

    resume = sub.add_parser("resume", help="continue a run from its newest checkpoint (or extend it)",
                            description="Continue the run in RUN_DIR exactly where its newest checkpoint left it.")
    resume.add_argument("run_dir", help="the run folder (holds run.toml and checkpoints/)")
    resume.add_argument("--extra-steps", type=_count(0), default=0,
                        help="train this many steps past the run's end (0 or more; default 0)")
    resume.add_argument("--processes", type=_count(1), help="override training.processes (N > 1: N processes "
                        "under torchrun; a checkpoint resumes under any process count)")
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
        desc.add_argument("--rank", type=_count(1), default=8, help="LoRA rank for the preview (default 8)")
        desc.add_argument("--depth", type=_count(0), default=3, help="tree depth to print (default 3)")
        desc.set_defaults(run=_run_inspect)

    export = sub.add_parser("export", help="write a run's adapter (PEFT format) or a merged model",
                            description="Export the trained adapter of RUN_DIR, or merge it into the base and "
                            "write the merged model (safetensors, or a transformers folder).")
    export.add_argument("run_dir", metavar="PATH", help="the run folder, or an adapter folder (ours or PEFT's, e.g. "
                        "one `combine` wrote) to merge into its base")
    export.add_argument("--base-model", metavar="SPEC", help="an adapter folder's base when its adapter_config.json "
                        "does not say it (demo:NAME, transformers:ID_OR_FOLDER, torchvision:NAME, python:FILE.py:FN)")
    what = export.add_mutually_exclusive_group(required=True)
    what.add_argument("--adapter", metavar="OUT", help="write the adapter (PEFT format) to this folder")
    what.add_argument("--merged", metavar="OUT", help="write the merged model to this folder")
    what.add_argument("--gguf", metavar="OUT.gguf", help="write the merged model as a llama.cpp GGUF file "
                      "(GPT-2, Llama-family)")
    what.add_argument("--gguf-adapter", metavar="OUT.gguf", help="write the LoRA adapter as a llama.cpp GGUF "
                      "adapter (llama-cli --lora OUT.gguf)")
    export.add_argument("--which", choices=("final", "best"), default="final",
                        help="the final weights (newest checkpoint) or the best evaluation's adapter")
    export.add_argument("--precision", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="merged model precision (default float32)")
    export.add_argument("--gguf-type", choices=("f32", "f16", "bf16", "q8_0"), default=None,
                        help="GGUF tensor type (default: f16 for a model, f32 for an adapter)")
    export.add_argument("--checksum", action="store_true",
                        help="record the merged weights' SHA-256 in the export's sidecar (plain models; "
                             "costs about 2.5x the write itself)")
    export.set_defaults(run=_run_export)

    push = sub.add_parser("push", help="upload a run's adapter or merged model to the Hugging Face Hub",
                          description="Upload RUN_DIR's adapter (PEFT format, default) or merged model to Hub "
                          "repository REPO_ID (owner/name, created when missing) with a generated model card "
                          "(README.md) and its loss plot. Needs a login (`huggingface-cli login` or HF_TOKEN); "
                          "the upload is one commit, so a failed push changes nothing there.")
    push.add_argument("run_dir", metavar="RUN_DIR", help="the run folder")
    push.add_argument("repo_id", metavar="REPO_ID", help="the repository, owner/name")
    kind = push.add_mutually_exclusive_group()
    kind.add_argument("--adapter", dest="kind", action="store_const", const="adapter",
                      help="push the adapter (the default)")
    kind.add_argument("--merged", dest="kind", action="store_const", const="merged", help="push the merged model")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--which", choices=("final", "best"), default="final",
                      help="the final weights (newest checkpoint) or the best evaluation's")
    push.set_defaults(run=_run_push, kind="adapter")

    trained_help = ("a run folder (run.toml), an adapter folder (adapter_config.json, ours or PEFT's) or a merged "
                    "export (a transformers folder, or a .safetensors file with its .export.json)")
    predict = sub.add_parser("predict", help="classify texts or images with a trained model (and its base)",
                             description="Run a trained classifier on INPUTs: text lines, image paths, or one "
                             ".csv/.jsonl file (its text or image column). PATH is " + trained_help + ".")
    predict.add_argument("path", help="the trained model: run folder, adapter folder or merged export")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="a text, an image path, or one .csv/.jsonl file")
    predict.add_argument("--base", action="store_true", help="add the base model's prediction (adapters disabled)")
    predict.add_argument("--top-k", type=int, default=1, help="labels shown per input (default 1)")
    predict.add_argument("--column", help="the .csv/.jsonl column holding the inputs (default: text, image, ...)")
    predict.add_argument("--json", action="store_true", help="print JSON (one object per input, in a list)")
    _trained_model_arguments(predict)
    predict.set_defaults(run=_run_predict)

    generate = sub.add_parser("generate", help="continue a prompt with a trained language model (and its base)",
                              description="Stream a trained causal language model's continuation of PROMPT. "
                              "PATH is " + trained_help + ".")
    generate.add_argument("path", help="the trained model: run folder, adapter folder or merged export")
    generate.add_argument("prompt", help="the text to continue")
    defaults = GENERATION_DEFAULTS
    generate.add_argument("--max-new-tokens", type=_count(1), default=defaults.max_new_tokens,
                          help=f"tokens to generate at most (default {defaults.max_new_tokens})")
    generate.add_argument("--temperature", type=float, default=defaults.temperature,
                          help=f"sampling temperature, 0 = greedy (default {defaults.temperature})")
    generate.add_argument("--top-p", type=float, default=defaults.top_p,
                          help=f"nucleus sampling mass (default {defaults.top_p})")
    generate.add_argument("--seed", type=int, default=defaults.seed, help=f"sampling seed (default {defaults.seed})")
    generate.add_argument("--no-chat-template", action="store_true",
                          help="feed the prompt as it is, even when the tokenizer has a chat template")
    generate.add_argument("--base", action="store_true", help="also generate with the base model (after the adapted)")
    generate.add_argument("--json", action="store_true", help="print the generations as one JSON object")
    _trained_model_arguments(generate)
    generate.set_defaults(run=_run_generate)

    _add_adapter_commands(sub)

    demo = sub.add_parser("demo", help="run a built-in demo offline on a CPU (digits: seconds; text, story, chat: "
                          "about a minute)",
                          description="digits: recover a rotated-digit domain with LoRA; text: topic classification "
                          "with the pretrained MiniLM encoder; story: a small story-telling GPT-2 learns a pirate's "
                          "voice; chat: the same GPT-2 is instruction-tuned on conversations (chatml, loss on the "
                          "answers, packed).")
    demo.add_argument("name", nargs="?", default="digits", choices=DEMOS,
                      help="which demo (default digits)")
    demo.add_argument("--steps", type=_count(1), help="training steps, 1 or more (default: the demo's own)")
    demo.add_argument("--output", help="run folder (default: a temporary folder)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=_run_demo)
    return parser


def _count(least: int):
    """An argparse type: a whole number ``least`` or more; argparse names the flag in its refusal."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    parse.__name__ = "count"  # argparse's "invalid <name> value" for errors not raised above
    return parse


# -- train / resume / demo ---------------------------------------------------------------------
def _run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from .run_config import RunConfig

    config = RunConfig.load(args.config)
    if args.output or args.overwrite:
        config = config.replace(output=dataclasses.replace(
            config.output, dir=args.output or config.output.dir, overwrite=args.overwrite or config.output.overwrite))
    if args.max_steps is not None and args.max_steps < 1:  # 0 is a choice, not "unset" (issue 15)
        raise ValueError(f"--max-steps must be at least 1, got {args.max_steps}; leave it out to use "
                         "training.max_steps from the config")
    if args.max_steps is not None or args.device or args.processes:
        config = config.replace(training=dataclasses.replace(
            config.training, max_steps=config.training.max_steps if args.max_steps is None else args.max_steps,
            device=args.device or config.training.device, processes=args.processes or config.training.processes))
    if args.extra_steps and not args.resume:
        raise ValueError("--extra-steps extends a resumed run; add --resume (or use `resume RUN_DIR --extra-steps N`)")
    check_output_folder(config.output.dir, "--output" if args.output else f"output.dir in {args.config}",
                        fix="train --output DIR, or output.dir in the config")
    args.report_dir = config.output.dir  # an unexpected error's report goes into the run folder
    return _train_or_launch(config, args, resume=args.resume, extra_steps=args.extra_steps)


def _train_or_launch(config, args: argparse.Namespace, *, resume: bool, extra_steps: int) -> int:
    """Train in this process, or, with training.processes > 1 outside torchrun, launch the processes
    under torchrun and follow them (a torchrun started by hand has its own count: it trains here)."""
    from .training import train
    from .training.launcher import launch_processes

    if config.training.processes > 1 and not under_torchrun():
        print(f"training in {config.training.processes} processes under torchrun "
              f"({config.training.distributed.upper()}) ...", file=sys.stderr)
        return _drive(lambda on_event, cancel: launch_processes(config, on_event, cancel, resume=resume,
                                                                extra_steps=extra_steps), args.quiet, launched=True)
    return _drive(lambda on_event, cancel: train(config, on_event, cancel, resume=resume, extra_steps=extra_steps),
                  args.quiet)


def under_torchrun() -> bool:
    """Whether this process is one of several torchrun started (``WORLD_SIZE`` set above 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


def check_output_folder(folder: str | Path, field: str, *, what: str = "the run folder", fix: str = "") -> None:
    """Refuse a folder to write to whose path is (or lies inside) an existing file, naming it, the
    ``field`` that gave it and the fix (it would otherwise fail with a bare "[Errno 17] File exists")."""
    path = Path(folder).expanduser()
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                where = "is a file" if place == path else f"lies inside {place}, which is a file"
                raise ValueError(f"{field}: {what} {path} {where}, not a folder; choose another folder"
                                 f"{f' ({fix})' if fix else ''}, or move that file away")
            return


def _run_resume(args: argparse.Namespace) -> int:
    import dataclasses

    from .training import load_run_config

    config = load_run_config(args.run_dir)
    if args.processes:
        config = config.replace(training=dataclasses.replace(config.training, processes=args.processes))
    return _train_or_launch(config, args, resume=True, extra_steps=args.extra_steps)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.output:
        check_output_folder(args.output, "--output", fix="demo --output DIR")
    output = args.output or tempfile.mkdtemp(prefix=f"lora-studio-demo-{args.name}-")
    args.report_dir = output
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
        elif args.name in ("story", "chat"):  # language models: perplexity, not accuracy
            print(f"validation perplexity {before['perplexity']:.2f} -> {after['perplexity']:.2f}")
        else:
            print(f"validation loss {before['loss']:.3f} -> {after['loss']:.3f}; accuracy "
                  f"{before['accuracy']:.1%} -> {after['accuracy']:.1%}")
    return code


def _drive(start, quiet: bool, *, launched: bool = False) -> int:
    """Run ``start(on_event, cancel)`` with a progress bar; Ctrl-C cancels cleanly (twice: at once).

    ``launched``: ``start`` runs processes of its own (``launch_processes``), ended first by a second Ctrl-C.
    Under a launch (the launcher's stop file named in the environment) a rank also stops when the
    file appears, and a rank that fails writes its report for the launcher.
    """
    from .training import CancelToken, Failed
    from .training.launcher import kill_launched_processes
    from .training.progress import ProgressPrinter

    cancel = CancelToken()
    printer = ProgressPrinter(enabled=not quiet and os.environ.get("RANK", "0") == "0", details=debugging())
    _watch_stop_file(cancel)

    def on_interrupt(signum, frame):  # first Ctrl-C: stop after this step, with a checkpoint
        if cancel.cancelled:
            if launched:
                kill_launched_processes()
            _abort_now()
        cancel.cancel()
        print("\ncancelling after this step (Ctrl-C again to abort now) ...", file=sys.stderr, flush=True)

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
        _report_rank_failure(message or "the run failed", failure)
        if failure is not None and failure.details and not debugging():  # a traceback: to a file, not the terminal
            message = f"{message}; {_report_text(write_error_report(failure.details, result.run_dir))}"
        print(f"lora-studio: error: {message}", file=sys.stderr)
        return EXIT_USAGE if failure is not None and failure.kind in ("config", "data") else EXIT_FAILED
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        printer.summary(result)
    return EXIT_CANCELLED if result.status == "cancelled" else EXIT_OK


def _watch_stop_file(cancel) -> None:
    """Under a launch: cancel this rank's run when the launcher's stop file appears (polled on a
    daemon thread; the trainer's all-reduce of the flag makes every rank stop at the same step)."""
    import threading

    from .training.launcher import STOP_FILE_ENV

    path = os.environ.get(STOP_FILE_ENV)
    if not path or not under_torchrun():
        return

    def watch() -> None:
        while not cancel.cancelled:
            if os.path.exists(path):
                cancel.cancel()
                return
            time.sleep(0.1)

    threading.Thread(target=watch, name="lora-studio-stop-file", daemon=True).start()


def _report_rank_failure(message: str, failure) -> None:
    """Under a launch: tell the launcher what failed on this rank and when (only rank 0 emits events)."""
    from .training.launcher import RANK_REPORTS_ENV, write_rank_report

    folder = os.environ.get(RANK_REPORTS_ENV)
    if folder and under_torchrun():
        write_rank_report(folder, int(os.environ.get("RANK", "0")), message,
                          failure.kind if failure is not None else "error", failure.details if failure else "")


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

    out = Path(args.adapter or args.merged or args.gguf or args.gguf_adapter)
    gguf_flag = "--gguf" if args.gguf else "--gguf-adapter" if args.gguf_adapter else None
    if gguf_flag and out.suffix != ".gguf":
        raise ValueError(f"{gguf_flag} {out}: a GGUF file's name ends in .gguf (llama.cpp looks for it)")
    if gguf_flag or (args.merged and out.suffix == ".safetensors"):  # a file: its folder must be one
        check_output_folder(out.parent, gguf_flag or "--merged", what="the export's folder")
    else:
        check_output_folder(out, "--adapter" if args.adapter else "--merged", what="the export folder")
    run_dir = Path(args.run_dir)
    full = False
    if (run_dir / "adapter_config.json").is_file():  # one adapter of a library: merged onto its base
        from .training.trained_run import load_for_inference

        _quiet_transformers()
        loaded = load_for_inference(run_dir, base_model=args.base_model)
    else:
        config = load_run_config(run_dir)
        full = not config.training.trains_adapter
        if full and (args.adapter or args.gguf_adapter):
            raise ValueError(f"{run_dir} is a {config.training.mode_title} run: it holds the whole model, no adapter; "
                             "use --merged OUT to write the model")
        _no_loading_bar()
        loaded = load_trained_run(run_dir, args.which)
    if gguf_flag:
        return _export_gguf(args, loaded, out)
    if args.adapter:
        summary = {"label_names": loaded.label_names} if loaded.label_names else None  # predict names its classes
        path = save_adapter(loaded.model, args.adapter, base_model_name_or_path=loaded.name_or_path,
                            run_summary=summary)
        print(f"adapter written to {path}")
        return EXIT_OK
    result = export_merged(loaded.model, args.merged, precision=args.precision, tokenizer=loaded.tokenizer,
                           checksum=args.checksum)
    what = f"model of the {config.training.mode_title} run" if full else "merged model"
    which = "" if (run_dir / "adapter_config.json").is_file() else f", the {args.which} weights"
    print(f"{what} ({result.kind}, {result.precision}{which}) written to {result.path}")
    return EXIT_OK


def _run_push(args: argparse.Namespace) -> int:
    from .training.hub_push import push_run

    _no_loading_bar()
    result = push_run(args.run_dir, args.repo_id, kind=args.kind, private=args.private, which=args.which)
    print(f"{result.kind} of {args.run_dir} pushed to {result.url} ({len(result.files)} files, with its model card)")
    return EXIT_OK


# -- predict / generate ----------------------------------------------------------------------------
def _export_gguf(args: argparse.Namespace, loaded, out: Path) -> int:
    """Write the GGUF file, read it back with gguf's reader and compare it with the model; a file that
    does not hold what it should is removed and the export fails (nothing wrong is left to load)."""
    from .disk.gguf_export import GGUF_TOLERANCE, export_gguf, export_gguf_adapter, verify_gguf

    if args.gguf:
        written = export_gguf(loaded.model, out, loaded.tokenizer, precision=args.gguf_type or "f16")
    else:
        written = export_gguf_adapter(loaded.model, out, precision=args.gguf_type or "f32")
    difference, bound = verify_gguf(written, loaded.model), GGUF_TOLERANCE[written.precision]
    if difference > bound:
        written.path.unlink(missing_ok=True)
        print(f"error: the GGUF file read back differs from the model by {difference:.3g} (relative; "
              f"{written.precision} allows {bound:.3g}), so it was removed; export it again, or report the model",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"GGUF {written.kind} ({written.architecture}, {written.precision}, {written.tensors} tensors) "
          f"written to {written.path}; read back with gguf's reader: largest difference {difference:.2g} "
          f"(relative, within the {written.precision} rounding {bound:.2g})")
    return EXIT_OK


def _trained_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--which", choices=("final", "best"), default="final",
                        help="run folders: the final weights or the best evaluation's adapter (default final)")
    parser.add_argument("--base-model", metavar="SPEC",
                        help="the base model when PATH does not say it (demo:NAME, transformers:ID_OR_FOLDER, "
                             "torchvision:NAME, python:FILE.py:FN)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")


def _device(choice: str):
    """``--device`` as a torch device, refused naming the flag when it is not one this machine has."""
    import re

    import torch

    from .training.devices import resolve_device

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", choice):
        raise ValueError(f"--device must be cpu, auto, cuda, cuda:N or mps, got {choice!r}")
    try:
        device = resolve_device(choice)
    except ValueError as exc:
        raise ValueError(str(exc).replace("training.device", "--device")) from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device is {choice!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                         "(cuda:0 ...); pick one of them, or cpu")
    return device


def _open_trained(args: argparse.Namespace):
    """The model PATH holds, on the device asked for (the same opening the window's Try tab uses)."""
    from .training.trained_run import load_for_inference

    device = _device(args.device)
    _quiet_transformers()
    loaded = load_for_inference(args.path, which=args.which, base_model=args.base_model)
    loaded.model.to(device)
    return loaded, device


def _quiet_transformers() -> None:
    """No "Loading weights" progress bar or load report between the command and its answer (a new
    head's missing keys are expected), and warnings as one line each."""
    import warnings

    warnings.formatwarning = lambda message, category, *rest, **kw: f"lora-studio: warning: {message}\n"
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # a dependency, but the command must not fail for want of silence
        return
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def _no_loading_bar() -> None:
    """No transformers "Loading weights" bar between the command and its answer; warnings stay on."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()


def _abort_now() -> None:
    """The second Ctrl-C: end the process at once with exit code 130.  Raising KeyboardInterrupt
    here could land inside torch or a ``finally`` and print a traceback with exit code -2 (issue
    15).  Every file a run writes is atomic, so its last checkpoint stays whole (a half-written
    staging folder may be left beside it)."""
    print("\naborted by a second Ctrl-C; the last checkpoint is kept", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_CANCELLED)


def _cancel_on_ctrl_c():
    """A cancel token that the first Ctrl-C sets (the work ends cleanly); the second aborts at once.
    Returns (token, restore)."""
    from .training import CancelToken

    cancel = CancelToken()

    def on_interrupt(signum, frame):
        if cancel.cancelled:
            _abort_now()
        cancel.cancel()

    previous = signal.signal(signal.SIGINT, on_interrupt) if _main_thread() else None
    return cancel, (lambda: signal.signal(signal.SIGINT, previous) if previous is not None else None)


def _run_predict(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from .inference import predict
    from .inference.inputs import TABLE_SUFFIXES, inputs_from_table

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    loaded, device = _open_trained(args)
    inputs: list[str] = list(args.inputs)
    if len(inputs) == 1 and Path(inputs[0]).suffix.lower() in TABLE_SUFFIXES and Path(inputs[0]).is_file():
        inputs = inputs_from_table(inputs[0], column=args.column, images=loaded.task == "image-classification")
    cancel, restore = _cancel_on_ctrl_c()
    try:
        predictions = predict(loaded, inputs, top_k=args.top_k, compare_base=args.base, device=device,
                              cancel=cancel)
    finally:
        restore()
    if args.json:
        records = [dataclasses.asdict(p) | {"changed": p.changed} for p in predictions]
        print(json.dumps(records, indent=2))
    else:
        _print_prediction_table(predictions, args.base)
    if cancel.cancelled:
        print(f"lora-studio predict: cancelled after {len(predictions)} of {len(inputs)} inputs", file=sys.stderr)
        return EXIT_CANCELLED
    return EXIT_OK


def _print_prediction_table(predictions, with_base: bool) -> None:
    """Input | adapted | base, the top labels with their probabilities; '*' marks a changed prediction."""
    def cell(scores, raw) -> str:
        if scores:
            return ", ".join(f"{s.label} {s.probability:.1%}" for s in scores)
        if raw is not None:
            return f"argmax {raw.argmax} of {list(raw.shape)} (max {raw.top[0][1]:.4g})"
        return "-"

    def short(text: str, width: int = 48) -> str:
        text = " ".join(text.split())
        if len(text) <= width:
            return text
        if Path(text).exists():  # a path: its end (the file's name) says most
            return "…" + text[-(width - 1):]
        return text[:width - 1] + "…"

    has_base = with_base and any(p.base is not None for p in predictions)
    rows = [[short(p.input), cell(p.adapted, p.adapted_raw)]
            + ([cell(p.base or [], p.base_raw), "*" if p.changed else ""] if has_base else [])
            for p in predictions]
    header = ["input", "adapted"] + (["base", "changed"] if has_base else [])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if with_base and not has_base:
        print("(the model carries no adapter: its base is the model itself)")
    elif has_base:
        changed = sum(p.changed for p in predictions)
        print(f"{changed} of {len(predictions)} predictions changed by the adapter (marked *)")


def _run_generate(args: argparse.Namespace) -> int:
    import json

    from .inference import generate_stream, generate_text

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed, chat_template=not args.no_chat_template)
    problem = settings.problem()
    if problem:
        raise ValueError(problem)
    loaded, device = _open_trained(args)
    sides = ("adapted", "base") if args.base else ("adapted",)
    cancel, restore = _cancel_on_ctrl_c()
    try:
        if args.json:
            texts = generate_text(loaded, args.prompt, settings, sides=sides, device=device, cancel=cancel)
            print(json.dumps({"prompt": args.prompt, **texts, "settings": {
                "max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                "top_p": settings.top_p, "seed": settings.seed}}, indent=2, ensure_ascii=False))
        else:
            # The terminal shows one stream at a time: the adapted live, then the base (the window interleaves).
            for which in sides:
                if cancel.cancelled:
                    break
                stream = generate_stream(loaded, args.prompt, settings, sides=(which,), device=device, cancel=cancel)
                if args.base:
                    print(f"--- {which} ---", flush=True)
                print(args.prompt, end="", flush=True)
                for piece in stream:
                    print(piece.text, end="", flush=True)
                print(flush=True)
    finally:
        restore()
    if cancel.cancelled:
        print("lora-studio generate: stopped (Ctrl-C)", file=sys.stderr)
        return EXIT_CANCELLED
    return EXIT_OK


# -- adapters list / show, combine -----------------------------------------------------------------
def _add_adapter_commands(sub) -> None:
    from .adapter.combination import COMBINATION_TYPES

    adapters = sub.add_parser("adapters", help="list or show adapter folders (ours or PEFT's)",
                              description="Read adapter folders without loading a model.")
    which = adapters.add_subparsers(dest="adapters_command", metavar="ACTION", required=True)
    listing = which.add_parser("list", help="one line per adapter folder: name, variant, rank, targets, size, base",
                               description="One line per adapter folder. A folder that is not itself an adapter "
                               "folder lists the adapter folders right inside it (a run folder: adapter/, best/).")
    listing.add_argument("folders", nargs="+", metavar="FOLDER", help="adapter, run or parent folders")
    listing.add_argument("--json", action="store_true", help="print JSON (a list of objects)")
    listing.set_defaults(run=_run_adapters_list)
    show = which.add_parser("show", help="everything about one adapter folder",
                            description="Everything read from one adapter folder's files.")
    show.add_argument("folder", help="the adapter folder (holds adapter_config.json)")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(run=_run_adapters_show)

    combine = sub.add_parser(
        "combine", help="combine adapter folders into a new adapter (linear, cat, svd, TIES, DARE, ...)",
        description="Load each adapter folder onto the base model BASE_SPEC (demo:NAME, transformers:ID_OR_FOLDER, "
        "torchvision:NAME, python:FILE.py:FN), combine them with PEFT's add_weighted_adapter method and save the "
        "result in PEFT's format. Methods: " + "; ".join(f"{k}: {v}" for k, v in COMBINATION_TYPES.items()) + ".")
    combine.add_argument("base", metavar="BASE_SPEC", help="the base model all the adapters were trained on")
    combine.add_argument("adapters", nargs="+", metavar="ADAPTER_FOLDER", help="two or more adapter (or run) folders")
    combine.add_argument("--weights", help="comma-separated, one per adapter (default 1 each: the sum)")
    combine.add_argument("--method", choices=tuple(COMBINATION_TYPES), default="svd",
                         help="combination type (default svd, PEFT's default)")
    combine.add_argument("--density", type=float, help="fraction of entries kept, 0 < d <= 1 (TIES, DARE, "
                                                       "magnitude_prune and their _svd forms)")
    combine.add_argument("--majority-sign", choices=("total", "frequency"), default="total",
                         help="TIES sign election (default total)")
    combine.add_argument("--svd-rank", type=int, help="rank of the result for the svd methods (default: the largest)")
    combine.add_argument("--seed", type=int, default=0, help="random seed for DARE's drops (default 0)")
    combine.add_argument("--out", required=True, metavar="DIR", help="folder to write the combined adapter to")
    combine.set_defaults(run=_run_combine)


def _adapter_folders(folder: Path) -> list[Path]:
    """``folder`` itself when it is an adapter folder, else the adapter folders right inside it."""
    from .disk.adapter_folder import ADAPTER_CONFIG_NAME

    if (folder / ADAPTER_CONFIG_NAME).is_file():
        return [folder]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    inside = sorted(p for p in folder.iterdir() if (p / ADAPTER_CONFIG_NAME).is_file())
    if not inside:
        _refuse_whole_model(folder)
    if not inside:
        raise FileNotFoundError(f"{folder} holds no {ADAPTER_CONFIG_NAME}, nor do the folders right inside it; "
                                "is it an adapter folder?")
    return inside


def _refuse_whole_model(folder: Path) -> None:
    """A full fine-tuning run (or its adapter/ or best/) holds a whole model, not an adapter: say so."""
    from .training.trained_run import holds_whole_model

    run = folder if (folder / "run.toml").is_file() else folder.parent
    if (run / "run.toml").is_file() and any(holds_whole_model(p) for p in (folder, run / "adapter", run / "best")):
        what = ("is a full fine-tuning or head-only run: it holds the whole model" if run == folder
                else "holds the whole model of a full fine-tuning or head-only run")
        raise ValueError(f"{folder} {what} (model.safetensors), not an adapter; write the model with "
                         f"`lora-studio export {run} --merged OUT`")


def _one_adapter_folder(folder: Path) -> Path:
    """The adapter ``folder`` means: itself, a run folder's final ``adapter/``, or the only one inside it."""
    inside = _adapter_folders(folder)
    if len(inside) == 1 or inside[0] == folder:
        return inside[0]
    if (folder / "adapter") in inside:
        return folder / "adapter"
    raise ValueError(f"{folder} holds several adapter folders ({', '.join(p.name for p in inside)}); name one")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _targets_text(targets: Sequence[str], whole: Sequence[str] = (), width: int = 48) -> str:
    # Layer paths repeat per block: the last parts, deduplicated, say what was adapted; "+" the whole modules.
    short = list(dict.fromkeys(t.rsplit(".", 1)[-1] for t in targets))
    text = f"{len(targets)}: {','.join(short)}" + "".join(f" +{m}" for m in whole)
    return text if len(text) <= width else text[:width - 1] + "…"


def _run_adapters_list(args: argparse.Namespace) -> int:
    import json

    from .disk.adapter_folder import read_adapter_facts

    facts, failed = [], False
    for folder in args.folders:
        try:
            facts.extend(read_adapter_facts(f) for f in _adapter_folders(Path(folder)))
        except (ValueError, OSError) as exc:  # one bad folder does not hide the others
            print(f"lora-studio adapters list: error: {exc}", file=sys.stderr)
            failed = True
    if args.json:
        print(json.dumps([f.to_dict() for f in facts], indent=2))
    elif facts:
        header = ["name", "variant", "rank", "targets", "size", "base", "folder"]
        rows = [[f.name, f.variant, str(f.rank), _targets_text(f.targets, f.modules_to_save), _size(f.size_bytes),
                 f.base_model_name_or_path or "-", str(f.folder)] for f in facts]  # fmt: skip
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return EXIT_USAGE if failed else EXIT_OK


def _run_adapters_show(args: argparse.Namespace) -> int:
    import json

    from .disk.adapter_folder import ADAPTER_CONFIG_NAME, read_adapter_facts

    if not (Path(args.folder) / ADAPTER_CONFIG_NAME).is_file():
        _refuse_whole_model(Path(args.folder))
    facts = read_adapter_facts(Path(args.folder))
    data = facts.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    data["size_bytes"] = f"{facts.size_bytes:,} ({_size(facts.size_bytes)})"
    data["parameters"] = f"{facts.parameters:,}" if facts.parameters is not None else "unknown (legacy .bin)"
    for key, value in data.items():
        if key == "ranks":
            continue  # shown with the targets
        if key == "targets":
            print(f"{'targets':<24}{len(facts.targets)} layers")
            for target in facts.targets:
                rank = facts.ranks.get(target)
                print(f"{'':<24}{target}" + (f"  r={rank}" if rank is not None else ""))
        elif isinstance(value, (dict, list, tuple)):
            print(f"{key:<24}{json.dumps(value) if value else '-'}")
        else:
            print(f"{key:<24}{value if value not in (None, '') else '-'}")
    return EXIT_OK


def _run_combine(args: argparse.Namespace) -> int:
    import re

    import torch

    from .adapter.combination import add_weighted_adapter, combination_problem
    from .adapter.lifecycle import delete_adapter, list_adapters, rename_adapter
    from .disk.adapter_folder import load_adapter, read_adapter_facts, save_adapter
    from .training.trained_run import load_for_inference

    check_output_folder(args.out, "--out", what="the combined adapter's folder")
    folders = [_one_adapter_folder(Path(f)) for f in args.adapters]
    if len(folders) < 2:
        raise ValueError("combine needs two or more adapter folders")
    weights = [1.0] * len(folders)
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ValueError(f"--weights must be comma-separated numbers, e.g. 0.5,0.5; got {args.weights!r}") from None
        if len(weights) != len(folders):
            raise ValueError(f"--weights has {len(weights)} numbers for {len(folders)} adapters; give one per adapter")
    names: list[str] = []
    for folder in folders:  # each adapter under a name of its own: its folder's (or run's), made unique
        name = re.sub(r"[^A-Za-z0-9_-]", "_", read_adapter_facts(folder).name) or "adapter"
        unique, n = name, 2
        while unique in names or unique == "default":
            unique, n = f"{name}-{n}", n + 1
        names.append(unique)
    _quiet_transformers()
    loaded = load_for_inference(folders[0], base_model=args.base)  # the base, with the first adapter as default
    model = loaded.model
    rename_adapter(model, "default", names[0])
    for folder, name in zip(folders[1:], names[1:]):
        load_adapter(model, folder, adapter_name=name)  # refused, with the reason, when it does not fit the base
    problem = combination_problem(model, names, weights, args.method, svd_rank=args.svd_rank, density=args.density,
                                  majority_sign_method=args.majority_sign, combine_modules_to_save=True)  # fmt: skip
    if problem:
        raise ValueError(problem)
    torch.manual_seed(args.seed)  # DARE's drops: the same seed gives the same adapter
    add_weighted_adapter(model, names, weights, "combined", combination_type=args.method, svd_rank=args.svd_rank,
                         density=args.density, majority_sign_method=args.majority_sign,
                         combine_modules_to_save=True)  # fmt: skip
    for name in names:
        delete_adapter(model, name)
    rename_adapter(model, "combined", "default")  # written at --out itself, PEFT's layout for one adapter
    assert list_adapters(model) == ["default"]
    summary = {"combined_from": [str(f) for f in folders], "adapter_names": names, "weights": weights,
               "method": args.method, "density": args.density, "majority_sign_method": args.majority_sign,
               "svd_rank": args.svd_rank, "seed": args.seed}  # fmt: skip
    if loaded.label_names:
        summary["label_names"] = list(loaded.label_names)  # predict names the classes
    path = save_adapter(model, args.out, base_model_name_or_path=args.base, run_summary=summary)
    listed = ", ".join(f"{n} x{w:g}" for n, w in zip(names, weights))
    print(f"combined {listed} with {args.method} -> {path}")
    return EXIT_OK

"""``train(run_config, on_event, cancel) -> TrainResult``: the whole training loop, top to bottom.

It knows nothing of threads or Qt: it reports through ``on_event`` (frozen
dataclasses from :mod:`.events`) and checks ``cancel`` between steps.  One step::

    seed dropout from (seed, step, rank)          -> exact resume under any process count
    for each micro-batch of this process's share of the global batch:
        loss = summed cross-entropy × processes / targets in the global batch
        (+ the variant's regularisation once per step), backward (DDP syncs on the last; FSDP on each)
    stop or skip on a non-finite loss or gradient  -> no checkpoint from a poisoned state
    clip, set each group's lr from the schedule, AdamW step, variant hook
    every N steps: metrics, evaluation (keep the best) and the fixed samples, checkpoint (atomic)

With a :class:`LiveModel` the run lends its model to readers between steps (and while paused).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from ..adapter.counting import count_parameters
from ..data.errors import DataError
from ..disk.adapter_folder import save_adapter, write_chat_template
from ..disk.atomic_files import atomic_path, atomic_write_json
from ..run_config import RunConfig
from .checkpoint import (
    CHECKPOINTS,
    TrainerState,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    load_sharded_checkpoint,
    prune_checkpoints,
    resume_problem,
    save_checkpoint,
    save_sharded_checkpoint,
)
from .devices import PeakMemory, free_device_memory, resolve_device
from .distributed import DistContext, all_sum, barrier, close_distributed, init_distributed
from .evaluation import EvalResult, evaluate, output_names
from .events import (
    CancelToken,
    CheckpointSaved,
    EvalMetrics,
    Event,
    Failed,
    Finished,
    StepMetrics,
    TrainingWarning,
    TrainResult,
)
from .fsdp import full_parameters_on_main, sharded_update_norms
from .live_model import LiveModel
from .metrics_log import MetricsLog
from .run_folder import RunFolderBusy, RunFolderLock, clear_leftovers
from .samples import SamplePlan, evaluate_samples, plan_samples
from .schedule import lr_factor
from .setup import RunSetup, build_run, trainable_parameters
from .task_loss import batch_variant_inputs, count_targets, score_batch, to_device
from .update_norms import layer_update_norms
from .variant_hooks import after_optimizer_step, regularization_loss, variant_summary

RUN_CONFIG_FILE = "run.toml"
RESULT_FILE = "result.json"
ADAPTER_DIR = "adapter"  # the final adapter, PEFT format (full fine-tuning: model.safetensors)
BEST_DIR = "best"
_OWNED = (CHECKPOINTS, ADAPTER_DIR, BEST_DIR, "metrics.jsonl", RESULT_FILE, "tensorboard")

OnEvent = Callable[[Event], None]


class _NonFinite(Exception):
    """A NaN/Inf loss or gradient under nonfinite = 'stop'."""


def train(
    run_config: RunConfig, on_event: OnEvent | None = None, cancel: CancelToken | None = None, *,
    resume: bool = False, extra_steps: int = 0, live: LiveModel | None = None,
) -> TrainResult:
    """Run (or, with ``resume``, continue) the training ``run_config`` describes; never raises for
    a failed run: the result's status is 'failed' and a :class:`Failed` event says why.

    ``extra_steps`` extends a resumed run past its old end ("train N more steps").  ``live``
    lends the model to other threads between steps (published once the run is built, withdrawn
    when it ends); the run trains the same with or without it.
    """
    cancel = cancel or CancelToken()
    out = Path(run_config.output.dir)
    started = time.perf_counter()
    dist = DistContext()
    log: MetricsLog | None = None
    setup: RunSetup | None = None
    state: TrainerState | None = None  # read by failed(): the step a failure happened at
    lock: RunFolderLock | None = None

    def emit(event: Event) -> None:
        if not dist.is_main:
            return
        if log is not None:
            log.write(event)
        if on_event is not None:
            on_event(event)

    def failed(message: str, kind: str, details: str = "") -> TrainResult:
        step = state.step if state is not None else 0
        emit(Failed(message, kind, step, details))
        return TrainResult("failed", step, run_config.training.max_steps, str(out), error=message,
                           seconds=time.perf_counter() - started)

    try:
        device = resolve_device(run_config.training.device, _local_rank())
        dist = init_distributed(device)
        lock = _hold_folder(out, dist, device)
        meter = PeakMemory(device)  # from before the model is built: its weights count too
        config, found, notes = _prepare_folder(run_config, out, resume, extra_steps, dist)
        if dist.is_main:
            log = MetricsLog(out, config.output.tensorboard)
        setup = build_run(config, dist, device)
        if dist.is_main and setup.data.chat_template:  # what the data was rendered with, for inference later
            write_chat_template(out, setup.data.chat_template)
        for note in [*notes, *setup.warnings]:
            emit(TrainingWarning(note))
        state = TrainerState(total_steps=config.training.max_steps)
        if found is not None:
            problem = resume_problem(found, dist, setup.sharded)  # a sharded checkpoint needs its process count
            if problem:
                raise ValueError(problem)
            if setup.sharded:
                state = load_sharded_checkpoint(found, setup.model, setup.optimizer, setup.scaler, dist)
            else:
                state = load_checkpoint(found, setup.model, setup.optimizer, setup.scaler)
            state.total_steps = config.training.max_steps
        plan, notes = plan_samples(config, setup.loaded.task, setup.data.validation)
        for note in notes:
            emit(TrainingWarning(note))
        if live is not None:
            live.publish(setup.loaded, setup.device, setup.autocast, state.step)
        # FSDP: every process generates the samples too (each forward gathers shards); only rank 0 emits them
        samples = plan if dist.is_main or setup.sharded else None
        return _loop(setup, state, emit, cancel, out, started, meter, _Run(live, samples))
    except _NonFinite as exc:
        return failed(str(exc), "nonfinite")
    except torch.OutOfMemoryError:
        return _out_of_memory(failed, setup)
    except RuntimeError as exc:
        if "out of memory" in str(exc) or "can't allocate memory" in str(exc):
            return _out_of_memory(failed, setup)
        return failed(f"training failed: {exc}", "error", traceback.format_exc())
    except DataError as exc:
        return failed(str(exc), "data")
    except (ValueError, OSError) as exc:
        return failed(str(exc), "config")
    except Exception as exc:  # a bug or an unexpected library error: report it, keep the caller alive
        return failed(f"training failed: {type(exc).__name__}: {exc}", "error", traceback.format_exc())
    finally:
        if setup is not None:
            setup.remove_hooks()  # NEFTune's noise is for this run's training only
        if live is not None:
            live.withdraw()
        if log is not None:
            log.close()
        if lock is not None:
            lock.release()
        close_distributed(dist)


def resume_run(run_dir: str | Path, on_event: OnEvent | None = None, cancel: CancelToken | None = None, *,
               extra_steps: int = 0, live: LiveModel | None = None) -> TrainResult:
    """Continue the run in ``run_dir`` from its newest checkpoint (``extra_steps`` past its end if given)."""
    config = load_run_config(run_dir)
    return train(config, on_event, cancel, resume=True, extra_steps=extra_steps, live=live)


@dataclasses.dataclass
class _Run:
    """What the loop carries besides the built run: the lent model and the sample plan."""

    live: LiveModel | None
    samples: SamplePlan | None  # None: no samples (not the main process without FSDP, or they failed once)

    def hold(self, step: int, *, after: int | None = None) -> AbstractContextManager:
        """Keep readers of the live model out while the weights change (or are saved)."""
        return nullcontext() if self.live is None else self.live.training(step, after=after)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config a run folder was started with, pointed at that folder."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {RUN_CONFIG_FILE})")
    config = RunConfig.load(path)
    return config.replace(output=dataclasses.replace(config.output, dir=str(run_dir)))


def _local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def _hold_folder(out: Path, dist: DistContext, device: torch.device) -> RunFolderLock | None:
    """Rank 0 takes the run folder's lock; every process refuses together when it is taken."""
    lock, message = None, ""
    if dist.is_main:
        lock = RunFolderLock(out)
        try:
            lock.acquire()
        except RunFolderBusy as exc:
            lock, message = None, str(exc)
    refused, = all_sum([float(bool(message))], dist, device)
    if refused:
        raise RunFolderBusy(message or f"{out} is in use by another run (rank 0 could not lock it)")
    return lock


def holds_trained_run(out: Path) -> bool:
    """Whether ``out`` holds something a run made that a restart would lose: a checkpoint, an
    adapter (or model), a best copy or a result.  A folder whose run failed in set-up, or was
    killed before its first checkpoint, holds only ``run.toml`` and a log: it can be reused."""
    return (latest_checkpoint(out) is not None or (out / ADAPTER_DIR).is_dir() or (out / BEST_DIR).is_dir()
            or (out / RESULT_FILE).is_file())


def _prepare_folder(config: RunConfig, out: Path, resume: bool, extra_steps: int,
                    dist: DistContext) -> tuple[RunConfig, Path | None, list[str]]:
    """Make ``out`` ready (under its lock): the config to run, the checkpoint to resume from, notes."""
    if extra_steps < 0:
        raise ValueError(f"extra steps must be >= 0, got {extra_steps}")
    if resume and extra_steps:
        training = dataclasses.replace(config.training, max_steps=config.training.max_steps + extra_steps)
        config = config.replace(training=training)
    ours = (out / RUN_CONFIG_FILE).exists()  # only a folder with our run.toml has files of ours to delete
    trained, found = holds_trained_run(out), latest_checkpoint(out)
    barrier(dist)  # every process looks before rank 0 changes anything below
    notes = []
    if resume and found is None and trained:  # results without a checkpoint: a restart would delete them
        raise ValueError(f"{out} holds a trained result but no checkpoint to resume from (checkpoints/ was "
                         "removed?); export what it holds, or start it again with output.overwrite = true")
    if resume and found is None:
        notes.append(f"{out} holds no checkpoint yet (its run stopped before the first one): starting it "
                     "again from step 0")
    if not resume and trained and not config.output.overwrite:
        raise ValueError(f"{out} already holds a run; resume it, choose another output.dir, or set "
                         "output.overwrite = true")
    if dist.is_main:
        clear_leftovers(out)
        if ours and (found is None or not resume):  # a fresh start: nothing of an earlier attempt stays
            for name in _OWNED:
                target = out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        config.save(out / RUN_CONFIG_FILE)
    barrier(dist)
    return config, found if resume else None, notes


def _loop(setup: RunSetup, state: TrainerState, emit, cancel: CancelToken, out: Path, started: float,
          meter: PeakMemory, run: _Run) -> TrainResult:
    cfg, plan, dist = setup.config.training, setup.plan, setup.dist
    params = trainable_parameters(setup.model)
    total = state.total_steps
    status, last_eval, last_saved = "finished", None, state.step
    order_epoch, order = -1, None
    step_seconds = None
    first_step, skipped = state.step, 0
    if cfg.eval_at_start and state.step == 0 and setup.data.validation is not None:
        last_eval = _evaluate(setup, state, emit, out, run)
    while state.step < total:
        cancel.wait_while_paused()
        step = state.step
        epoch = step // plan.steps_per_epoch
        if epoch != order_epoch:
            order_epoch, order = epoch, plan.epoch_order(epoch)
        batches = [setup.data.collate([setup.data.train[i] for i in idx])
                   for idx in plan.micro_batches(step, dist.rank, order)]
        local_targets = sum(count_targets(b, setup.loaded.task) for b in batches)
        global_targets, cancelled = all_sum([float(local_targets), float(cancel.cancelled)], dist, setup.device)
        if cancelled:
            status = "cancelled"
            break
        tick = time.perf_counter()
        with run.hold(step):
            if not setup.model.training:  # a reader of the live model switched it to eval mode
                setup.model.train()
            # dropout depends on (seed, step, rank) only
            torch.manual_seed(cfg.seed * 1_000_003 + step * 64 + dist.rank)
            loss_sum, tokens = _forward_backward(setup, batches, global_targets)
            loss_total, bad_loss = all_sum([loss_sum, float(not math.isfinite(loss_sum))], dist, setup.device)
            loss = loss_total / max(global_targets, 1.0)
            if setup.scaler.is_enabled():
                setup.scaler.unscale_(setup.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf")))
            poisoned = bad_loss or (not math.isfinite(grad_norm) and not setup.scaler.is_enabled())
            if poisoned:
                what = "loss" if bad_loss else "gradient norm"
                if cfg.nonfinite == "stop":
                    previous = latest_checkpoint(out)
                    raise _NonFinite(
                        f"the {what} became NaN/Inf at step {step + 1}; stopped without saving this state. "
                        + (f"The last good checkpoint is {previous}. " if previous else "")
                        + "Try a lower training.lr, gradient clipping (training.max_grad_norm), or "
                        "training.nonfinite = 'skip'."
                    )
                setup.optimizer.zero_grad(set_to_none=True)
                skipped += 1
                emit(TrainingWarning(f"skipped step {step + 1}: the {what} was NaN/Inf", step + 1))
            else:
                factor = lr_factor(step, total, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio)
                for group in setup.optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
                setup.scaler.step(setup.optimizer)
                setup.scaler.update()
                setup.optimizer.zero_grad(set_to_none=True)
                after_optimizer_step(setup.model, step, total) if cfg.trains_adapter else None
            state.step = step + 1
            state.last_loss = loss
        elapsed = time.perf_counter() - tick
        step_seconds = elapsed if step_seconds is None else 0.9 * step_seconds + 0.1 * elapsed
        if state.step % cfg.log_every == 0 or state.step == total:
            emit(StepMetrics(
                step=state.step, total_steps=total, epoch=state.step / plan.steps_per_epoch, loss=loss,
                learning_rate=setup.optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                samples_per_second=cfg.batch_size / max(elapsed, 1e-9),
                tokens_per_second=None if tokens is None else tokens * dist.world_size / max(elapsed, 1e-9),
                memory_bytes=meter.peak(), eta_seconds=step_seconds * (total - state.step),
            ))
        if _due(state.step, cfg.eval_every, total) and setup.data.validation is not None:
            last_eval = _evaluate(setup, state, emit, out, run)
            if cfg.early_stopping_patience and state.evals_since_best >= cfg.early_stopping_patience:
                status = "stopped-early"
                break
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < total:
            with run.hold(state.step, after=state.step):
                _checkpoint(setup, state, emit, out, "step")
            last_saved = state.step
    _refuse_mostly_skipped(skipped, state.step - first_step, out)
    with run.hold(state.step, after=state.step):
        if state.step != last_saved or not latest_checkpoint(out):
            _checkpoint(setup, state, emit, out, "final" if status != "cancelled" else "step")
        result = _finish(setup, state, status, last_eval, out, started)
    emit(Finished(result))
    return result


def _refuse_mostly_skipped(skipped: int, steps: int, out: Path) -> None:
    """A run that skipped most of its steps (nonfinite = 'skip') did not train: fail, do not report success.

    Its last good checkpoint is kept; no final adapter is written from the barely trained state.
    """
    if skipped < 2 or skipped * 2 <= steps:
        return
    previous = latest_checkpoint(out)
    raise _NonFinite(
        f"{skipped} of the run's {steps} steps were skipped because the loss or gradient was NaN/Inf, so the "
        "model barely trained; no final adapter was saved. "
        + (f"The last checkpoint is {previous}. " if previous else "")
        + "Try a lower training.lr, gradient clipping (training.max_grad_norm), or mixed precision off."
    )


def _forward_backward(setup: RunSetup, batches: list[dict], global_targets: float) -> tuple[float, int | None]:
    """Accumulate the step's gradients over this process's micro-batches; return (summed loss, tokens)."""
    task, style = setup.loaded.task, setup.loaded.forward_style
    # DDP (and FSDP's reduce-scatter) averages gradients over processes, so each scales by processes /
    # global targets: the result is the mean over every target of the global batch, whatever the split.
    scale = setup.dist.world_size / max(global_targets, 1.0)
    loss_sum, tokens = 0.0, None
    for index, batch in enumerate(batches):
        batch = to_device(batch, setup.device)
        last = index == len(batches) - 1
        # DDP syncs only the last micro-batch; FSDP reduce-scatters each one into the sharded gradients (a
        # skipped sync would keep whole unsharded gradients until the last: the memory FSDP is there to save)
        ddp = setup.dist.distributed and not setup.sharded
        # one no_sync around forward and backward: its context manager cannot be entered twice
        with setup.train_model.no_sync() if ddp and not last else _nothing():
            with setup.autocast(), batch_variant_inputs(setup.model, batch):
                score = score_batch(setup.train_model, batch, task, style)
                loss = score.loss_sum * scale
                if index == 0 and setup.config.training.trains_adapter:
                    extra = regularization_loss(setup.model)
                    loss = loss if extra is None else loss + extra
            setup.scaler.scale(loss).backward()
        loss_sum += float(score.loss_sum.detach())
        tokens = None if score.tokens is None else (tokens or 0) + score.tokens
    return loss_sum, tokens


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _due(step: int, every: int, total: int) -> bool:
    return step == total or (every > 0 and step % every == 0)


def _evaluate(setup: RunSetup, state: TrainerState, emit, out: Path, run: _Run) -> EvalResult:
    with run.hold(state.step, after=state.step):
        return _evaluate_held(setup, state, emit, out, run)


def _evaluate_held(setup: RunSetup, state: TrainerState, emit, out: Path, run: _Run) -> EvalResult:
    # Every process evaluates the whole validation set (identical weights, so identical
    # results and one early-stopping decision, with no extra communication).
    result = evaluate(setup.model, setup.data.validation, setup.data.collate, task=setup.loaded.task,
                      forward_style=setup.loaded.forward_style, device=setup.device,
                      batch_size=setup.config.training.eval_batch_size, autocast=setup.autocast)
    best = math.isfinite(result.loss) and (state.best_loss is None or result.loss < state.best_loss)
    if best:
        state.best_loss, state.best_step, state.evals_since_best = result.loss, state.step, 0
    else:
        state.evals_since_best += 1
    measure = sharded_update_norms if setup.sharded else layer_update_norms
    norms = measure(setup.model) if setup.config.training.trains_adapter else None
    names = None if result.confusion is None else output_names(setup.data.label_names, len(result.confusion))
    emit(EvalMetrics(state.step, result.loss, result.accuracy, result.perplexity, best, norms,
                     confusion=result.confusion, class_names=names))
    if run.samples is not None:  # the main process only (None elsewhere), or with FSDP every process in step
        _emit_samples(setup, run, state.step, emit)
    if best and (setup.dist.is_main or setup.sharded):  # FSDP: every process takes part in the gather
        path = _save_trained(setup, out / BEST_DIR, state, emit)
        if path is not None:
            emit(CheckpointSaved(state.step, str(path), "best"))
    return result


def _emit_samples(setup: RunSetup, run: _Run, step: int, emit) -> None:
    """The fixed samples at this evaluation; a failure among them is told once and ends the samples, not the run."""
    assert run.samples is not None
    try:
        samples = evaluate_samples(run.samples, setup.loaded, setup.data.validation, setup.data.collate,
                                   setup.data.label_names, step=step, device=setup.device, autocast=setup.autocast,
                                   batch_size=setup.config.training.eval_batch_size)
    except Exception as exc:  # noqa: BLE001 - the samples only show progress; the training goes on without them
        run.samples = None
        if isinstance(exc, torch.OutOfMemoryError):
            free_device_memory(setup.device)
        emit(TrainingWarning(f"the run's samples could not be evaluated ({type(exc).__name__}: {exc}); "
                             "training goes on without them", step))
        return
    emit(samples)


def _checkpoint(setup: RunSetup, state: TrainerState, emit, out: Path, kind: str) -> None:
    folder = out / CHECKPOINTS / checkpoint_name(state.step)
    if setup.sharded:  # every process writes its shards into the folder rank 0 stages
        save_sharded_checkpoint(folder, setup.model, setup.optimizer, setup.scaler, state, setup.dist, setup.device)
    elif setup.dist.is_main:
        save_checkpoint(folder, setup.model, setup.optimizer, setup.scaler, state)
    if setup.dist.is_main:
        prune_checkpoints(out, setup.config.training.keep_checkpoints)
        emit(CheckpointSaved(state.step, str(folder), kind))
    barrier(setup.dist)  # nobody runs ahead (or exits) while rank 0 is still writing


def _save_trained(setup: RunSetup, folder: Path, state: TrainerState, emit) -> Path | None:
    """The trained adapter in PEFT's format (full fine-tuning: the whole model as safetensors).

    FSDP: every process calls it (the whole tensors are gathered onto rank 0, which writes); None elsewhere.
    """
    if setup.sharded:
        with full_parameters_on_main(setup.model, setup.dist) as main:
            return _save_whole(setup, folder, state, emit) if main else None
    return _save_whole(setup, folder, state, emit)


def _save_whole(setup: RunSetup, folder: Path, state: TrainerState, emit) -> Path | None:
    if not setup.config.training.trains_adapter:
        from safetensors.torch import save_file

        weights = {k: v.detach().cpu().contiguous().clone() for k, v in setup.model.state_dict().items()}
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(weights, str(tmp))
        return folder
    try:
        summary = {"step": state.step, "best_loss": state.best_loss}
        if setup.data.label_names:  # an adapter copied out of its run folder still names its classes
            summary["label_names"] = list(setup.data.label_names)
        return save_adapter(setup.model, folder, run_summary=summary,
                            base_model_name_or_path=setup.loaded.name_or_path,
                            chat_template=setup.data.chat_template)
    except (ValueError, NotImplementedError) as exc:  # e.g. a variant PEFT's format cannot hold
        emit(TrainingWarning(f"could not save the adapter in PEFT format ({exc}); the checkpoint has it", state.step))
        return None


def _finish(setup: RunSetup, state: TrainerState, status: str, last_eval: EvalResult | None, out: Path,
            started: float) -> TrainResult:
    adapter_dir = None
    if setup.dist.is_main or setup.sharded:
        saved = _save_trained(setup, out / ADAPTER_DIR, state, lambda e: None)
        adapter_dir = str(saved) if saved else None
    counts = count_parameters(setup.model)
    result = TrainResult(
        status=status, steps=state.step, total_steps=state.total_steps, run_dir=str(out), final_loss=state.last_loss,
        best_eval_loss=state.best_loss, best_step=state.best_step,
        last_eval=dataclasses.asdict(last_eval) if last_eval else None, adapter_dir=adapter_dir,
        checkpoint_dir=str(latest_checkpoint(out)) if setup.dist.is_main else None,
        seconds=time.perf_counter() - started, trainable_parameters=counts.trainable, total_parameters=counts.total,
        variant=variant_summary(setup.model) if setup.config.training.trains_adapter else {},
    )
    if setup.dist.is_main:
        atomic_write_json(out / RESULT_FILE, json.loads(json.dumps(dataclasses.asdict(result), default=str)))
    barrier(setup.dist)
    return result


def _out_of_memory(failed, setup: RunSetup | None) -> TrainResult:
    device = setup.device if setup is not None else torch.device("cpu")
    if setup is not None:  # drop every reference to the run's tensors so a new run has the memory
        setup.optimizer.state.clear()
        setup.model = setup.train_model = None  # type: ignore[assignment]
    free_device_memory(device)
    return failed(
        "out of memory: try a smaller training.batch_size (with training.grad_accumulation to keep the same "
        "effective batch), model.gradient_checkpointing = true, mixed precision, or a lower LoRA rank",
        "out-of-memory",
    )

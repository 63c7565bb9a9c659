"""Push a run to the Hugging Face Hub: its adapter (PEFT format) or its merged model, with a model card.

Everything is staged in a local temporary folder first (the adapter or merged export, ``README.md``
with the model card, ``loss.svg``), then sent with one ``upload_folder`` call, which the Hub
applies as one commit: a push that fails (offline, no token, no permission) leaves the repository
as it was, and nothing half-written.  Offline (the project's one rule, ``core/models/offline.py``)
the push is refused before anything is staged.  The Hub client is ``huggingface_hub.HfApi``
(transformers already brings it); tests pass a stand-in with the same two methods (``create_repo``,
``upload_folder``).

The card follows the Hub's model-card conventions: YAML front matter (``base_model``,
``library_name`` ``peft`` for an adapter or ``transformers`` for a model, ``tags``), then what was
trained on what, the settings, the results and the training-loss curve (an SVG drawn here: no
plotting library needed for one polyline).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..disk.adapter_folder import save_adapter
from ..disk.merged_export import export_merged
from ..disk.safe_loading import read_json_object
from ..models.offline import offline
from ..run_config import RunConfig
from .metrics_log import read_metrics
from .trained_run import load_trained_run
from .trainer import RESULT_FILE, load_run_config

PUSH_KINDS = ("adapter", "merged")


@dataclass(frozen=True)
class PushResult:
    """What a push sent."""

    repo_id: str
    url: str
    kind: str
    files: tuple[str, ...]


def push_run(run_dir: str | Path, repo_id: str, *, kind: str = "adapter", private: bool = False,
             which: str = "final", token: str | None = None, api: Any = None) -> PushResult:
    """Upload run ``run_dir``'s adapter (``kind="adapter"``) or merged model (``"merged"``) with a model
    card to Hub repository ``repo_id`` (created when missing, ``private`` if asked)."""
    if kind not in PUSH_KINDS:
        raise ValueError(f"push kind must be one of {', '.join(PUSH_KINDS)}, got {kind!r}")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repository id {repo_id!r} must be 'owner/name' (e.g. 'alice/minilm-sentiment-lora')")
    if offline():
        raise OSError(f"cannot push to {repo_id}: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1, or "
                      "TRANSFORMERS_OFFLINE / LORA_STUDIO_OFFLINE); nothing was sent. Unset it and connect, or copy "
                      "the export by hand")
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if kind == "adapter" and not config.training.trains_adapter:
        raise ValueError(f"{run_dir} is a {config.training.mode_title} run: it holds the whole model, no adapter; "
                         "push it with kind 'merged' (--merged)")
    loaded = load_trained_run(run_dir, which)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="lora-studio-push-") as tmp:
        stage = Path(tmp) / "repo"
        if kind == "adapter":
            summary = {"label_names": loaded.label_names} if loaded.label_names else None
            save_adapter(loaded.model, stage, base_model_name_or_path=loaded.name_or_path, run_summary=summary)
        else:
            export_merged(loaded.model, stage, tokenizer=loaded.tokenizer)
        (stage / "loss.svg").write_text(loss_svg(run_dir), encoding="utf-8")
        (stage / "README.md").write_text(model_card(run_dir, config, kind, loaded.name_or_path), encoding="utf-8")
        files = tuple(sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()))
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(stage),
                              commit_message=f"LoRA Studio: {kind} of run {run_dir.name}")
        except Exception as exc:  # noqa: BLE001 - network, auth, permission: one message, nothing half-sent
            raise OSError(f"pushing to {repo_id} failed ({type(exc).__name__}: {exc}); nothing was changed there "
                          "(the upload is one commit). Check the connection and `huggingface-cli login`") from None
    return PushResult(repo_id, str(url), kind, files)


def model_card(run_dir: Path, config: RunConfig, kind: str, base: str | None) -> str:
    """The repository's ``README.md``: front matter, what was trained, settings, results, the loss plot."""
    result = _result(run_dir)
    lora, training, data = config.lora, config.training, config.data
    front = ["---", f"library_name: {'peft' if kind == 'adapter' else 'transformers'}"]
    if base:
        front.append(f"base_model: {base}")
    front += ["tags:", "- lora-studio", f"- {lora.variant if training.trains_adapter else training.mode}", "---"]
    setup = (f"{lora.variant} adapter, r = {lora.r}, alpha = {lora.alpha:g}, targets {_targets(lora.targets)}"
             if training.trains_adapter else f"{training.mode_title} training (no adapter)")
    lines = [
        *front, "", f"# {run_dir.name}", "",
        f"{'A LoRA adapter' if kind == 'adapter' else 'A fine-tuned model'} trained with LoRA Studio "
        f"from `{base or config.model.name}` on {_data_text(data)}.", "",
        "## Settings", "", "| setting | value |", "| --- | --- |",
        f"| what trains | {setup} |",
        f"| steps | {training.max_steps}, batch {training.batch_size}, lr {training.lr:g} ({training.schedule}) |",
        f"| precision | {training.precision} |", f"| seed | {training.seed} |", "",
        "## Results", "",
    ]
    if result:
        lines += ["| metric | value |", "| --- | --- |", f"| status | {result.get('status')} |",
                  f"| steps done | {result.get('steps')} |"]
        for key, title in (("final_loss", "final training loss"), ("best_eval_loss", "best validation loss")):
            if isinstance(result.get(key), (int, float)):
                lines.append(f"| {title} | {result[key]:.4f} |")
        last = result.get("last_eval") or {}
        if isinstance(last.get("accuracy"), (int, float)):
            lines.append(f"| validation accuracy | {last['accuracy']:.1%} |")
        if isinstance(result.get("trainable_parameters"), int):
            lines.append(f"| trainable parameters | {result['trainable_parameters']:,} |")
    else:
        lines.append("The run has no result yet (it was stopped before its end).")
    lines += ["", "![Training loss](loss.svg)", ""]
    return "\n".join(lines) + "\n"


def _result(run_dir: Path) -> dict:
    path = run_dir / RESULT_FILE
    return read_json_object(path, "train the run again to rewrite it") if path.is_file() else {}


def _targets(targets: Any) -> str:
    return f"`{targets}`" if isinstance(targets, str) else ", ".join(f"`{t}`" for t in targets)


def _data_text(data: Any) -> str:
    if not getattr(data, "train", None):
        return f"the built-in {data.kind} data"
    return f"{data.kind} data (`{Path(data.train).name}`)"


def loss_svg(run_dir: Path, width: int = 480, height: int = 200) -> str:
    """The run's training loss against step as a small SVG line chart (an empty chart when none)."""
    points = [(r["step"], r["loss"]) for r in read_metrics(run_dir)
              if r.get("event") == "StepMetrics" and isinstance(r.get("loss"), (int, float))]
    pad = 30
    body = ""
    if points:
        steps, losses = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
        y0, y1 = min(losses), max(losses) if max(losses) > min(losses) else min(losses) + 1
        coords = " ".join(f"{pad + (s - x0) / (x1 - x0) * (width - 2 * pad):.1f},"
                          f"{height - pad - (v - y0) / (y1 - y0) * (height - 2 * pad):.1f}" for s, v in points)
        body = (f'<polyline fill="none" stroke="#2e6fd8" stroke-width="1.5" points="{coords}"/>'
                f'<text x="{pad}" y="{pad - 8}" font-size="11">{y1:.3g}</text>'
                f'<text x="{pad}" y="{height - pad + 14}" font-size="11">{y0:.3g} · step {x0}–{x1}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><rect width="100%" height="100%" fill="white"/>'
            f'<text x="{width / 2}" y="16" font-size="12" text-anchor="middle">training loss</text>{body}</svg>\n')


__all__ = ["PUSH_KINDS", "PushResult", "loss_svg", "model_card", "push_run"]

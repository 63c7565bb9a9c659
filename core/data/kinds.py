"""Which data kinds fit a model: the task each kind trains, and the digits demo's special case.

The window offers only the kinds that fit the loaded model (the others are shown disabled
with this module's reason), so a resnet18 is never started on 8×8 grey digits.
"""

from __future__ import annotations

from ..models.loading import infer_task
from ..run_config import DATA_KINDS, ModelConfig

KIND_TASKS = {
    "image-folder": "image-classification",
    "torchvision": "image-classification",
    "digits": "image-classification",
    "text-classification": "sequence-classification",
    "causal-lm": "causal-lm",
}
"""data.kind -> the model task it trains."""


def model_task(model: ModelConfig, task: str | None = None) -> str | None:
    """The model's task: ``task`` (a loaded model's), else the configured or inferred one; None when unknown."""
    if task:
        return task
    try:
        return infer_task(model)
    except ValueError:  # a transformers model with no task set: any kind may fit
        return None


def data_kind_problem(kind: str, model: ModelConfig, task: str | None = None) -> str | None:
    """Why data of ``kind`` cannot train ``model`` (a loaded model's ``task`` wins over the config's), or None."""
    task = model_task(model, task)
    if task is not None and KIND_TASKS[kind] != task:
        return f"{kind} data needs a {KIND_TASKS[kind]} model; {model.source}:{model.name} is for {task}"
    if kind == "digits" and model.source not in ("python",) and (model.source, model.name) != ("demo", "digits"):
        return (f"the digits demo's 8×8 grey images fit only the digits demo model, not {model.source}:{model.name}; "
                "use an image folder or a torchvision dataset")
    return None


def fitting_data_kinds(model: ModelConfig, task: str | None = None) -> list[str]:
    """The data kinds that fit ``model``, in DATA_KINDS order."""
    return [kind for kind in DATA_KINDS if data_kind_problem(kind, model, task) is None]

"""Hyper-LoRA: a small hypernetwork generates each layer's A and B from a task embedding.

::

    e (embedding_dim) ─► Linear ─► tanh/√h ─► z (hidden_dim) ─┬─► H_A z + A₀ ─► A(e)
                                                              └─► H_B z + B₀ ─► B(e)

    y = base(x) + s · B(e) A(e) x

The generator's output biases ``A₀``/``B₀`` *are* the layer's plain LoRA factors
(``lora_A``/``lora_B``, with the layer's own shapes and init), so with the heads
``H_A``/``H_B`` at zero a fresh adapter is exactly a fresh LoRA: the identity.
The heads start at zero (the usual zero-init of a generator's last layer), and the
embedding starts to matter as soon as they train.

**One hypernetwork per layer.**  HyperFormer (Karimi Mahabadi et al., 2021) shares
one generator across layers and tells layers apart by a layer embedding.  Here
every adapter tensor lives on the layer it adapts (so freezing, counting, deletion
and saving work per layer), and layers have different shapes, so a shared
generator would still need a head per layer shape -- and the heads hold nearly all
of its parameters.  Per-layer generators cost ``hidden_dim ×`` a LoRA of the same
rank, plus a tiny trunk.

**One embedding per batch.**  ``task_embedding`` is a single vector of size
``embedding_dim`` (shape ``(embedding_dim,)`` or ``(1, embedding_dim)``) for the
whole batch: A and B are generated once per forward and every layer type works
unchanged (weight-space layers included).  Per-sample embeddings would need a
separate A and B per sample; group samples by task instead.  For the same reason
the update for a given embedding is an ordinary low-rank update, so
``merge(model, task_embedding=e)`` merges it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer
from .conditioned import ConditionedBehaviour
from .layer_state import buffer_name, variant_container
from .registry import Variant, register_variant


@dataclass
class HyperSettings:
    """Settings of Hyper-LoRA."""

    embedding_dim: int = field(
        default=8, metadata={"help": "Size of the task embedding given with each batch (task_embedding)."}
    )
    hidden_dim: int = field(
        default=8,
        metadata={"help": "Width of each layer's generator; its heads cost hidden_dim times a LoRA of the same rank."},
    )

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class HyperGenerator(nn.Module):
    """One layer's generator: a shared trunk and, per adapted weight, a head for A and one for B."""

    def __init__(self, embedding_dim: int, hidden_dim: int, sizes: dict[str, tuple[int, int]], **kw: Any) -> None:
        super().__init__()
        self.trunk = nn.Linear(embedding_dim, hidden_dim, **kw)
        self.heads_A = nn.ParameterDict(
            {buffer_name(k): nn.Parameter(torch.empty(a, hidden_dim, **kw)) for k, (a, _) in sizes.items()}
        )
        self.heads_B = nn.ParameterDict(
            {buffer_name(k): nn.Parameter(torch.empty(b, hidden_dim, **kw)) for k, (_, b) in sizes.items()}
        )

    def reset(self) -> None:
        """Trunk as nn.Linear initialises itself; heads at zero so A(e), B(e) start at A₀, B₀."""
        self.trunk.reset_parameters()
        for head in (*self.heads_A.values(), *self.heads_B.values()):
            nn.init.zeros_(head)

    def code(self, embedding: torch.Tensor) -> torch.Tensor:
        """The hidden code z of an embedding.

        tanh keeps it bounded whatever the embedding's scale; dividing by sqrt(hidden_dim) keeps a
        generated factor's scale independent of the generator's width (a head of entries of size σ
        gives factor entries of size about σ, not σ·sqrt(hidden_dim)), as fan-in scaling does.
        """
        hidden = self.trunk.out_features
        return torch.tanh(self.trunk(embedding.to(self.trunk.weight))) / hidden**0.5


class HyperBehaviour(ConditionedBehaviour):
    """A(e) = A₀ + H_A z(e), B(e) = B₀ + H_B z(e); the generator lives in ``layer.lora_hyper``."""
    forward_path = "own"  # factors generated from the task embedding

    merge_input = "task_embedding"

    def __init__(self, embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim

    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        super().create(layer, adapter, r)  # A₀, B₀: the layer's plain factors
        sizes = {}
        for key in layer.weight_slots():
            a, b = layer.stored_factors(adapter, key)
            sizes[key] = (a.numel(), b.numel())
        a, _ = layer.stored_factors(adapter, next(iter(sizes)))
        variant_container(layer, "lora_hyper")[adapter] = HyperGenerator(
            self.embedding_dim, self.hidden_dim, sizes, dtype=a.dtype, device=a.device
        )

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        super().initialise(layer, adapter, init, untie)
        layer.lora_hyper[adapter].reset()

    # -- the embedding ------------------------------------------------------------------------------
    def check_merge_input(self, value: object) -> torch.Tensor:
        embedding = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float32)
        if not embedding.is_floating_point():
            raise ValueError(f"task_embedding must be a float vector, got dtype {embedding.dtype}")
        if embedding.dim() == 2 and embedding.shape[0] == 1:
            embedding = embedding[0]
        if embedding.dim() != 1 or embedding.shape[0] != self.embedding_dim:
            raise ValueError(
                f"task_embedding must be one vector of size embedding_dim={self.embedding_dim} for the whole "
                f"batch (shape ({self.embedding_dim},) or (1, {self.embedding_dim})), got shape "
                f"{tuple(embedding.shape)}; Hyper-LoRA takes one embedding per batch, so group samples by task"
            )
        return embedding  # not detached: a learned task embedding gets its gradient through the generator

    def snapshot(self, value: torch.Tensor) -> torch.Tensor:
        # Unmerge must take out what was merged, even if the caller changes its tensor afterwards.
        return value.detach().clone()

    def missing_input_message(self, name: str) -> str:
        return (
            f"Hyper-LoRA generates its update from {name}: run the model inside "
            f"`with variant_inputs(model, task_embedding=e):`, and merge with merge(model, task_embedding=e), "
            f"where e is a float vector of size embedding_dim={self.embedding_dim} for the whole batch"
        )

    # -- the update ------------------------------------------------------------------------------------
    def factors(self, layer: AdapterLayer, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A(e) and B(e) for the embedding in effect, in the layer's plain-LoRA shapes."""
        a0, b0 = layer.stored_factors(adapter, key)
        generator = layer.lora_hyper[adapter]
        z = generator.code(self.current_input(layer))
        a = a0 + (generator.heads_A[buffer_name(key)] @ z).view_as(a0)
        b = b0 + (generator.heads_B[buffer_name(key)] @ z).view_as(b0)
        return a, b


class Hyper(Variant):
    name = "hyper"
    title = "Hyper-LoRA"
    description = (
        "A small hypernetwork in each adapted layer generates the LoRA factors A and B from a task embedding "
        "given with the batch, so one adapter serves many tasks and related tasks share what they learn: "
        "y = W·x + s·B(e)·A(e)·x. Each generator is a tanh layer followed by zero-initialised heads, so "
        "training starts from the base model. For a chosen embedding the update is an ordinary low-rank one, "
        "so it merges into the weights for that embedding."
    )
    paper = (
        "Ha, Dai and Le, 'HyperNetworks', ICLR 2017 (arXiv:1609.09106); Karimi Mahabadi et al., "
        "'Parameter-efficient Multi-task Fine-tuning for Transformers via Shared Hypernetworks' (HyperFormer), "
        "ACL 2021 (arXiv:2106.04489), which generates adapters from task embeddings. Here the generator "
        "produces LoRA factors, one generator per layer (no layer embedding), one embedding per batch."
    )
    merge_note = (
        "merge(model, task_embedding=e) merges the update generated for embedding e (the merged model equals "
        "the adapter run with e); unmerge before merging another embedding. A later merge without "
        "task_embedding merges the last embedding again."
    )
    merge_inputs = ("task_embedding",)
    settings_class = HyperSettings
    peft_type = None

    def example_inputs(self, batch_size: int) -> dict[str, Any]:
        """One embedding of the default size for the whole batch (spread over [-1, 1])."""
        return {"task_embedding": torch.linspace(-1.0, 1.0, HyperSettings().embedding_dim)}

    def merge_example(self, batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
        inputs = self.example_inputs(batch_size)
        return dict(inputs), inputs

    def behaviour(self, layer: AdapterLayer, settings: HyperSettings) -> AdapterBehaviour:
        return HyperBehaviour(settings.embedding_dim, settings.hidden_dim)


register_variant(Hyper())

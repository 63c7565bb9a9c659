"""The adapter-layer contract shared by every wrapped layer type.

A wrapper *contains* the layer it adapts (``base_layer``), never inherits from
it (PEFT's and loralib's design)::

        x ──► base_layer ──────────────┐
        │                              ▼
        └─► dropout ─► A (r×in) ─► B (out×r) ─► ×(alpha/r) ─► (+) ─► y

Each named adapter owns a pair of factors per adapted weight.  A subclass
supplies the mechanics of its layer type: :meth:`weight_slots` (which base
weights are adapted, and whether ``B @ A`` must be transposed to match them),
:meth:`stored_factors` (the A and B parameters of one adapter for one weight) and, for
input-side layers, :meth:`project_down`/:meth:`project_up`/:meth:`apply_weight`.  The
mathematics of each adapter (its forward, update, merge) belongs to its
:class:`~.behaviour.AdapterBehaviour`: standard LoRA, or a variant's.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .behaviour import AdapterBehaviour

#: Forward paths from slowest to fastest (see :attr:`AdapterLayer.fast_paths`).
FAST_PATHS = ("none", "fused", "folded")


def lora_scaling(alpha: float, r: int, use_rslora: bool) -> float:
    """The factor ``s`` of the update ``s·B·A``: alpha/r, or alpha/sqrt(r) with rsLoRA (Kalajdzievski
    2023, section 3), which keeps the update's scale from shrinking as the rank grows."""
    return alpha / (math.sqrt(r) if use_rslora else r)


@dataclass(frozen=True)
class WeightSlot:
    """One adapted weight of the base layer."""

    param: nn.Parameter
    transposed: bool = False  # True when the weight is stored (in, out), e.g. GPT-2's Conv1D or an embedding

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as the 2-D matrix that ``B @ A`` approximates."""
        return weight.t() if self.transposed else weight.reshape(weight.shape[0], -1)

    def layout(self, matrix: torch.Tensor) -> torch.Tensor:
        """A ``B @ A``-shaped matrix put back into the weight's own shape."""
        return (matrix.t() if self.transposed else matrix).reshape(self.param.shape)


class AdapterLayer(nn.Module):
    """Base of every wrapper. Subclasses add factor creation and ``forward``."""

    #: The fastest path forward may take for standard LoRA (a behaviour with ``forward_path == "standard"``),
    #: declared by each layer type in its own class body: ``"folded"`` (the update folded into the weight
    #: where that pays, else the fused function), ``"fused"`` (the fused autograd function of
    #: :mod:`.fused_lora`), ``"none"`` (op by op through :meth:`project_down`/:meth:`project_up`).
    #: A class that defines its own projections must declare it, since the fast paths reproduce only the
    #: projections they were written for.  :meth:`limit_fast_paths` lowers it on one layer.
    fast_paths: ClassVar[str] = "none"
    #: Names of the sub-modules/parameter dicts that hold adapter factors (for freezing and saving).
    #: Copied per instance: a variant may register more containers on the layer it adapts.
    factor_attributes: tuple[str, ...] = ("lora_A", "lora_B")

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.fast_paths not in FAST_PATHS:
            raise TypeError(f"{cls.__name__}.fast_paths must be one of {FAST_PATHS}; got {cls.fast_paths!r}")
        own = cls.__dict__
        if ("project_down" in own or "project_up" in own) and "fast_paths" not in own:
            raise TypeError(f"{cls.__name__} defines its own projections: declare fast_paths "
                            "('none' unless the fast paths compute exactly these projections)")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.factor_attributes = list(type(self).factor_attributes)
        self.behaviours: dict[str, AdapterBehaviour] = {}
        # Shared with the model's AdapterState: per-batch inputs a variant needs (e.g. task ids).
        self.variant_inputs: dict[str, object] = {}
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []
        self.adapters_disabled = False
        # Weights shared with another module (tied embeddings) are merged into a new tensor so the
        # other user keeps the original; the original is put back when the last update comes out.
        self._tied_originals: dict[str, nn.Parameter] = {}

    # -- hooks for subclasses --------------------------------------------------------
    def weight_slots(self) -> dict[str, WeightSlot]:
        raise NotImplementedError

    def stored_factors(self, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (A, B) parameters of ``adapter`` for weight ``key``; any shape, flattened to 2-D here."""
        raise NotImplementedError

    def create_factors(self, adapter: str, r: int) -> None:
        raise NotImplementedError

    def reset_factors(self, adapter: str, init: str) -> None:
        """Default and Gaussian init: A random, B zero, so the adapter starts as the identity."""
        for key in self.weight_slots():
            a, b = self.stored_factors(adapter, key)
            a2d = a.view(a.shape[0], -1)
            if init == "gaussian":
                nn.init.normal_(a2d, std=1.0 / self.r[adapter])
            else:  # Kaiming-uniform A, as nn.Linear initialises (loralib, PEFT)
                nn.init.kaiming_uniform_(a2d, a=math.sqrt(5))
            nn.init.zeros_(b)

    @classmethod
    def added_parameters(cls, base_layer: nn.Module, r: int) -> int:
        """Parameters one adapter of rank ``r`` adds to ``base_layer`` (without building it)."""
        raise NotImplementedError

    def limit_fast_paths(self, fastest: str) -> None:
        """Let this layer take no path faster than ``fastest`` (one of :data:`FAST_PATHS`): ``"none"`` runs
        standard LoRA op by op (the tests' oracle, the benchmark's unfused arm), ``"fused"`` never folds."""
        if fastest not in FAST_PATHS:
            raise ValueError(f"fastest must be one of {', '.join(FAST_PATHS)}; got {fastest!r}")
        allowed = FAST_PATHS.index(type(self).fast_paths)
        self.fast_paths = FAST_PATHS[min(allowed, FAST_PATHS.index(fastest))]

    # -- adapters ----------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.r)

    def add_adapter(
        self,
        adapter: str,
        *,
        r: int,
        alpha: float,
        dropout: float,
        init: str,
        use_rslora: bool,
        untie: frozenset[str] = frozenset(),
        behaviour: AdapterBehaviour | None = None,
    ) -> None:
        """Create adapter ``adapter`` with its parameters, scaling and initialisation.

        ``behaviour`` is the adapter's mathematics (default: standard LoRA). ``untie`` names
        weights shared with another module: a behaviour whose initialisation rewrites the base
        weight (PiSSA) gives this layer its own copy of those so the other module is unaffected.
        """
        if adapter in self.r:
            raise ValueError(f"adapter {adapter!r} already exists on this layer")
        behaviour = behaviour or AdapterBehaviour()
        self.behaviours[adapter] = behaviour
        self.r[adapter] = r
        self.lora_alpha[adapter] = alpha
        self.scaling[adapter] = lora_scaling(alpha, r, use_rslora)
        self.lora_dropout[adapter] = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        behaviour.create(self, adapter, r)
        if self.on_meta():
            return  # browsing only: nothing to initialise
        with torch.no_grad():
            behaviour.initialise(self, adapter, init, untie)

    def delete_adapter(self, adapter: str) -> None:
        """Remove ``adapter``'s factors (unmerging it first if it is merged)."""
        if adapter in self.merged_adapters:
            self.unmerge(adapter)
        self.behaviours[adapter].delete(self, adapter)
        del self.lora_dropout[adapter]
        for table in (self.r, self.lora_alpha, self.scaling, self.behaviours):
            table.pop(adapter)
        if self.active_adapter == adapter:
            self.active_adapter = None

    def set_active(self, adapter: str | None) -> None:
        """Make ``adapter`` the one used in forward and the only one that trains."""
        self.active_adapter = adapter if adapter in self.r else None
        for name, behaviour in self.behaviours.items():
            for p in behaviour.parameters(self, name):
                p.requires_grad_(name == self.active_adapter)

    def adapter_parameters(self, adapter: str) -> list[nn.Parameter]:
        """Every trainable tensor of ``adapter`` on this layer."""
        return list(self.behaviours[adapter].parameters(self, adapter))

    def adapter_in_use(self) -> str | None:
        """The adapter forward must add on top of the base, if any."""
        name = self.active_adapter
        if self.adapters_disabled or name is None or name in self.merged_adapters:
            return None
        return name

    def _run_base_disabled(self) -> None:
        # Disabled means the base output exactly; a merged update must come out of the weight first.
        if self.adapters_disabled and self.merged_adapters:
            warnings.warn("adapters are disabled while merged: unmerging them first", stacklevel=3)
            self.unmerge()

    # -- the update ----------------------------------------------------------------------
    def delta_weight(self, adapter: str, key: str = "weight") -> torch.Tensor:
        """The update of weight ``key`` (e.g. ``scaling · B @ A``) in the weight's shape, in float32."""
        return self.behaviours[adapter].delta_weight(self, adapter, key)

    def delta_weights(self, adapter: str) -> dict[str, torch.Tensor]:
        """Every adapted weight's update for ``adapter``."""
        return {key: self.delta_weight(adapter, key) for key in self.weight_slots()}

    def factors_finite(self, adapter: str) -> bool:
        """True when every parameter of ``adapter`` is free of NaN and Inf (cheap pre-merge check)."""
        return all(bool(torch.isfinite(p).all()) for p in self.adapter_parameters(adapter))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Input-side layers: the base output plus the active adapter's contribution."""
        self._run_base_disabled()
        result = self.base_layer(x, *args, **kwargs)
        adapter = self.adapter_in_use()
        if adapter is None:
            return result
        return self.behaviours[adapter].forward(self, adapter, x, result)

    @torch.no_grad()
    def merge(self, adapter: str | None = None, untie: frozenset[str] = frozenset()) -> None:
        """Add ``adapter``'s update (default: the active one) into the base weights, in float32.

        Idempotent: merging an adapter that is already merged does nothing. The merged
        weight is computed into a new tensor and checked before the base is touched.
        Weights named in ``untie`` are shared with another module: they get a new tensor
        instead of being changed in place, so the other module's output stays the same.
        """
        adapter = adapter or self.active_adapter
        if adapter in self.merged_adapters:
            self.behaviours[adapter].check_merged_again(self, adapter)
            return
        if adapter is None:
            return
        if adapter not in self.r:
            raise ValueError(f"no adapter named {adapter!r} on this layer")
        self.behaviours[adapter].merge(self, adapter, untie)
        self.merged_adapters.append(adapter)

    @torch.no_grad()
    def unmerge(self, adapter: str | None = None) -> None:
        """Take merged updates out again (``adapter`` only, or all, newest first), in float32."""
        names = [adapter] if adapter is not None else list(reversed(self.merged_adapters))
        for name in names:
            if name not in self.merged_adapters:
                continue
            self.behaviours[name].unmerge(self, name)
            self.merged_adapters.remove(name)
        if not self.merged_adapters:
            for key, original in self._tied_originals.items():
                self.set_base_weight(key, original)  # exact: the shared original was never changed
            self._tied_originals.clear()

    def write_base_weight(self, key: str, value: torch.Tensor, *, untie: bool) -> None:
        """Store a new float32 value of base weight ``key`` in its own dtype.

        ``untie``: the weight is shared with another module, so it gets a new tensor here and the
        original is kept (and put back by the last unmerge).
        """
        slot = self.weight_slots()[key]
        if untie and key not in self._tied_originals:
            self._tied_originals[key] = slot.param
            self.set_base_weight(key, nn.Parameter(value.to(slot.param.dtype), slot.param.requires_grad))
        else:
            slot.param.copy_(value.to(slot.param.dtype))

    def set_base_weight(self, key: str, param: nn.Parameter) -> None:
        owner, _, attr = key.rpartition(".")
        setattr(self.base_layer.get_submodule(owner) if owner else self.base_layer, attr, param)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    # -- hooks for initialisations that set the factors themselves (PiSSA, AdaLoRA) -----------------
    def reimpose_constraints(self, adapter: str) -> None:
        """Re-impose this layer type's constraints on factors an initialisation set (e.g. an embedding's
        padding row stays zero)."""

    # -- mechanics of input-side layers (Linear, Conv, Embedding) ---------------------------------
    def project_down(self, x: torch.Tensor, a: torch.Tensor, adapter: str) -> torch.Tensor:
        """Project an input through A (given as a tensor, so variants can pass masked factors)."""
        raise NotImplementedError(f"{type(self).__name__} is adapted in weight space")

    def project_up(self, h: torch.Tensor, b: torch.Tensor, adapter: str) -> torch.Tensor:
        """Project the rank-r activation back up through B."""
        raise NotImplementedError(f"{type(self).__name__} is adapted in weight space")

    def fused_forward(self, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor | None:
        """Standard LoRA's output as one fused autograd function, or None where this layer type (or
        this call) has none: then the behaviour's op-by-op path runs."""
        return None

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Apply a whole weight-shaped tensor (no bias) the way the base layer applies its weight."""
        raise NotImplementedError(f"{type(self).__name__} is adapted in weight space")

    # -- helpers ---------------------------------------------------------------------------------
    def on_meta(self) -> bool:
        return any(p.is_meta for p in self.base_layer.parameters())

    def factor_dtype(self) -> torch.dtype:
        # Adapters train in float32 even over a float16/bfloat16 base: their updates are small and
        # would be lost to rounding otherwise (the QLoRA recipe).
        dtype = next(self.base_layer.parameters()).dtype
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def factor_device(self) -> torch.device:
        return next(self.base_layer.parameters()).device

    def __getattr__(self, name: str):
        # Code around a wrapped layer may read its attributes (``in_features``, ``weight``,
        # ``batch_first``...): fall through to the base layer, as PEFT does.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{k}: r={v}" for k, v in self.r.items())
        return f"adapters=[{ranks}], active={self.active_adapter!r}, merged={self.merged_adapters}"

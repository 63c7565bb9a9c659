"""AdaLoRA on one layer: the SVD-form update, its orthogonality penalty and its importance scores.

Zhang et al. 2023 (section 3.1) write each update as ``P Λ Q``, an SVD in form::

    x ─► Q (r×in) ─► diag(Λ ⊙ m) ─► P (out×r) ─► ×s ─► (+ base)

with ``P = lora_B``, ``Q = lora_A`` (so the layer's own A and B mechanics run it)
and ``Λ = lora_E``, a vector of r singular values.  ``m`` is a boolean mask per
singular value (``lora_E_mask``): the budget schedule switches triplets off by
clearing their bit, so the rank is exactly what the schedule says at every moment,
forward, merge and a reloaded adapter all agree, and the mask is saved.

Importance (section 3.2) needs each step's gradients, but a training loop clears
them before ``after_step`` runs.  So :meth:`factors` hands out views of P, Λ and Q
with gradient hooks that keep a copy of what reaches them; the hooks belong to that
step's graph only, so nothing stays attached to the parameters themselves.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer
from .layer_state import MaskSet, buffer_name, variant_container

#: AdaLoRA's reference code and PEFT draw P and Q from N(0, 0.02²); Λ starts at zero (section 3.1).
INIT_STD = 0.02


class AdaLoraBehaviour(AdapterBehaviour):
    """``y = base(x) + s · P diag(Λ ⊙ m) Q x``, starting as the identity because Λ = 0."""
    forward_path = "own"  # P·Λ·Q with the pruned singular values masked

    def __init__(self, target_rank: int, beta1: float, beta2: float) -> None:
        self.target_rank = target_rank
        self.beta1 = beta1
        self.beta2 = beta2
        self._grads: dict[tuple[str, str], torch.Tensor] = {}  # (weight key, role) -> this step's gradient
        self._sensitivity: dict[tuple[str, str], torch.Tensor] = {}  # smoothed sensitivity, Ī
        self._uncertainty: dict[tuple[str, str], torch.Tensor] = {}  # smoothed uncertainty, Ū

    # -- parameters ---------------------------------------------------------------------------------
    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        """P and Q as the layer's B and A, plus Λ (trainable) and its mask (a buffer) per adapted weight."""
        if r < self.target_rank:
            raise ValueError(
                f"AdaLoRA prunes from the initial rank r={r} down to variant_settings.target_rank="
                f"{self.target_rank}, so r must be at least target_rank; raise r or lower target_rank"
            )
        layer.create_factors(adapter, r)
        kw = {"device": layer.factor_device(), "dtype": layer.factor_dtype()}
        keys = list(layer.weight_slots())
        variant_container(layer, "lora_E")[adapter] = nn.ParameterDict(
            {buffer_name(key): nn.Parameter(torch.zeros(r, **kw)) for key in keys}
        )
        variant_container(layer, "lora_E_mask")[adapter] = MaskSet(
            {key: torch.ones(r, dtype=torch.bool, device=kw["device"]) for key in keys}
        )

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        """P, Q Gaussian and Λ zero (section 3.1), whatever ``init`` asks."""
        for key in layer.weight_slots():
            for factor in layer.stored_factors(adapter, key):
                nn.init.normal_(factor, std=INIT_STD)
        layer.reimpose_constraints(adapter)  # on fresh factors (an embedding's padding column stays zero)

    def singular_values(self, layer: AdapterLayer, adapter: str, key: str) -> tuple[nn.Parameter, torch.Tensor]:
        """(Λ, its boolean mask) of weight ``key``."""
        return layer.lora_E[adapter][buffer_name(key)], layer.lora_E_mask[adapter].get(key)

    def rank(self, layer: AdapterLayer, adapter: str, key: str) -> int:
        """The number of singular values of weight ``key`` still in use."""
        return int(self.singular_values(layer, adapter, key)[1].sum())

    # -- the update ------------------------------------------------------------------------------------
    def factors(self, layer: AdapterLayer, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(diag(Λ ⊙ m) Q, P)``: every use of the adapter (forward, delta weight, merge) sees the mask."""
        q, p = layer.stored_factors(adapter, key)
        values, mask = self.singular_values(layer, adapter, key)
        q, values, p = self._watch(key, "Q", q), self._watch(key, "E", values), self._watch(key, "P", p)
        values = values * mask
        return q * values.view(-1, *([1] * (q.dim() - 1))), p

    def orthogonality(self, layer: AdapterLayer, adapter: str) -> list[torch.Tensor]:
        """``||PᵀP − I||²_F + ||QQᵀ − I||²_F`` per adapted weight (section 3.1): keeps P and Q near-orthogonal,
        so Λ behaves like singular values and dropping one removes little else."""
        terms = []
        for key in layer.weight_slots():
            q, p = layer.stored_factors(adapter, key)
            q = self._watch(key, "Q", q).reshape(q.shape[0], -1)
            p = self._watch(key, "P", p).reshape(p.shape[0], -1)
            eye = torch.eye(q.shape[0], device=q.device, dtype=q.dtype)
            terms.append(((p.t() @ p - eye) ** 2).sum() + ((q @ q.t() - eye) ** 2).sum())
        return terms

    # -- importance (section 3.2) -------------------------------------------------------------------------
    def _watch(self, key: str, role: str, tensor: torch.Tensor) -> torch.Tensor:
        """A view of ``tensor`` whose gradient is recorded for the importance scores (training only)."""
        if not (torch.is_grad_enabled() and tensor.requires_grad):
            return tensor
        view = tensor.view_as(tensor)
        view.register_hook(partial(self._record, key, role))
        return view

    def _record(self, key: str, role: str, grad: torch.Tensor) -> None:
        # Summed over every use in a step (a layer called twice, the penalty, gradient accumulation).
        slot = (key, role)
        previous = self._grads.get(slot)
        self._grads[slot] = grad.detach().clone() if previous is None else previous + grad.detach()

    def _parameter(self, layer: AdapterLayer, adapter: str, key: str, role: str) -> torch.Tensor:
        q, p = layer.stored_factors(adapter, key)
        return {"P": p, "Q": q, "E": self.singular_values(layer, adapter, key)[0]}[role]

    def start_step(self) -> None:
        """Forget gradients recorded before this step (a step the trainer skipped leaves its own behind)."""
        self._grads.clear()

    @torch.no_grad()
    def update_importance(self, layer: AdapterLayer, adapter: str) -> None:
        """Fold the last step's sensitivity ``I = |w · ∂L/∂w|`` into its moving averages (section 3.2):
        ``Ī ← β1 Ī + (1−β1) I`` and the uncertainty ``Ū ← β2 Ū + (1−β2) |I − Ī|``.

        A gradient holding NaN or Inf (a step a float16 loss scaler skipped) is left out.
        """
        for slot, grad in self._grads.items():
            if not bool(torch.isfinite(grad).all()):
                continue
            sensitivity = (self._parameter(layer, adapter, *slot).detach() * grad).abs()
            smoothed = self._sensitivity.get(slot, torch.zeros_like(sensitivity))
            smoothed = self.beta1 * smoothed + (1 - self.beta1) * sensitivity
            uncertainty = self._uncertainty.get(slot, torch.zeros_like(sensitivity))
            self._uncertainty[slot] = self.beta2 * uncertainty + (1 - self.beta2) * (sensitivity - smoothed).abs()
            self._sensitivity[slot] = smoothed
        self._grads.clear()

    @torch.no_grad()
    def triplet_scores(self, layer: AdapterLayer, adapter: str, key: str) -> torch.Tensor:
        """``S_i = s(λ_i) + mean_j s(P_ji) + mean_j s(Q_ij)`` with ``s = Ī · Ū`` (section 3.2), one per triplet."""
        values = self.singular_values(layer, adapter, key)[0]
        r = values.shape[0]

        def score(role: str) -> torch.Tensor:
            slot = (key, role)
            if slot not in self._sensitivity:  # never trained yet: no evidence either way
                return torch.zeros_like(self._parameter(layer, adapter, key, role))
            return self._sensitivity[slot] * self._uncertainty[slot]

        p_score = score("P").reshape(-1, r).mean(0)
        q_score = score("Q").reshape(r, -1).mean(1)
        return (score("E") + p_score + q_score).float()

    @torch.no_grad()
    def keep_triplets(self, layer: AdapterLayer, adapter: str, key: str, keep: torch.Tensor) -> None:
        """Set the mask of weight ``key`` to ``keep`` and zero the dropped λ (see :meth:`zero_masked_values`)."""
        values, mask = self.singular_values(layer, adapter, key)
        mask.copy_(keep.to(mask.device))
        values.masked_fill_(~mask, 0.0)

    @torch.no_grad()
    def zero_masked_values(self, layer: AdapterLayer, adapter: str) -> None:
        """Zero every masked λ, as the paper's truncation of Λ does (section 3.2).

        A masked λ gets no gradient, but an optimizer's momentum can still move it; zeroing it after every
        step keeps the stored Λ equal to the effective one and lets a triplet that comes back start from zero.
        """
        for key in layer.weight_slots():
            values, mask = self.singular_values(layer, adapter, key)
            values.masked_fill_(~mask, 0.0)

"""Settings LLM users expect: NEFTune noise (training mode only, the paper's scale, seeded, removed
after the run), the optimizer choice (8-bit AdamW refused by name off CUDA), and truncation at
data.max_length reported as a warning that counts the cut examples."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lora_studio.core.adapter.config import LoraConfig
from lora_studio.core.models.demo_models import load_demo_model
from lora_studio.core.run_config import DataConfig, ModelConfig, OutputConfig, RunConfig, TrainingConfig
from lora_studio.core.training import Failed, StepMetrics, TrainingWarning, train
from lora_studio.core.training.neftune import add_neftune, neftune_scale
from lora_studio.core.training.optimizers import build_optimizer


@pytest.fixture(scope="module")
def story():
    return load_demo_model("story")


def _embedded(model, ids: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        model(input_ids=ids)
    finally:
        handle.remove()
    return seen[0]


def test_neftune_noise_only_while_training_at_the_papers_scale(story) -> None:
    model, alpha = story.model, 5.0
    ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        clean_embeddings = model.get_input_embeddings()(ids)
        clean_logits = model(input_ids=ids).logits
        handle = add_neftune(model, alpha)
        try:
            torch.testing.assert_close(model(input_ids=ids).logits, clean_logits, rtol=0, atol=0)  # eval: untouched
            model.train()
            torch.manual_seed(7)
            noisy = _embedded(model, ids) - clean_embeddings
            torch.manual_seed(7)
            again = _embedded(model, ids) - clean_embeddings
        finally:
            handle.remove()
            model.eval()
        after = _embedded(model.train(), ids) - clean_embeddings  # the hook is gone: no noise
        model.eval()
    scale = neftune_scale(alpha, 48, model.config.n_embd)
    assert scale == pytest.approx(alpha / math.sqrt(48 * model.config.n_embd))
    assert noisy.abs().max() <= scale * (1 + 1e-5)  # uniform in [-scale, scale]
    assert noisy.abs().max() > 0.95 * scale  # and it fills the range (12k draws)
    assert noisy.std() == pytest.approx(scale / math.sqrt(3), rel=0.05)  # a uniform's standard deviation
    torch.testing.assert_close(noisy, again, rtol=0, atol=0)  # seeded
    assert after.abs().max() == 0


def test_neftune_refuses_a_model_without_input_embeddings() -> None:
    with pytest.raises(ValueError, match="neftune_alpha needs a language model"):
        add_neftune(torch.nn.Linear(2, 2), 5.0)


def test_optimizer_choice_and_8bit_refused_by_name_off_cuda() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    adamw = build_optimizer("adamw", [{"params": [param]}], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0,
                            device=torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW)
    with pytest.raises(ValueError, match=r"adamw_8bit.*CUDA only.*use adamw"):
        build_optimizer("adamw_8bit", [{"params": [param]}], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0,
                        device=torch.device("cpu"))
    with pytest.raises(ValueError, match="training.optimizer"):
        TrainingConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="training.neftune_alpha"):
        TrainingConfig(neftune_alpha=-1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="8-bit AdamW runs on CUDA only")
def test_8bit_adamw_steps_on_cuda() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    param = torch.nn.Parameter(torch.randn(4096, device="cuda"))
    optimizer = build_optimizer("adamw_8bit", [{"params": [param]}], lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0,
                                device=torch.device("cuda"))
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    before = param.detach().clone()
    (param ** 2).sum().backward()
    optimizer.step()
    assert (param.detach() - before).abs().max() > 0


def _lm_run(tmp_path, rows: list[str], **changes) -> RunConfig:
    path = tmp_path / "lm.jsonl"
    path.write_text("\n".join(json.dumps({"text": r}) for r in rows), encoding="utf-8")
    training = dict(max_steps=1, batch_size=2, eval_every=0, checkpoint_every=0, device="cpu")
    training.update(changes.pop("training", {}))
    return RunConfig(model=ModelConfig(source="demo", name="story"),
                     data=DataConfig(kind="causal-lm", train=str(path), validation_split=0.0, **changes),
                     lora=LoraConfig(r=2, alpha=4, targets=["c_attn"]),
                     training=TrainingConfig(**training),
                     output=OutputConfig(dir=str(tmp_path / "run"), tensorboard=False))


@pytest.mark.parametrize("packing", [False, True])
def test_examples_cut_at_max_length_are_counted_in_a_warning(tmp_path, packing: bool) -> None:
    long = " ".join(["the little dog ran to the park"] * 6)  # far over 16 tokens
    rows = [long, "Tom had a ball.", long, "The sun was warm.", long]
    events = []
    result = train(_lm_run(tmp_path, rows, max_length=16, packing=packing), events.append)
    assert result.status == "finished", [e for e in events if isinstance(e, Failed)]
    cut = [e.message for e in events if isinstance(e, TrainingWarning) and "data.max_length" in e.message]
    assert cut and cut[0].startswith("3 of 5 examples are longer than data.max_length (16 tokens)")
    speeds = [e.tokens_per_second for e in events if isinstance(e, StepMetrics)]
    assert speeds and all(s is not None and s > 0 for s in speeds)  # a packed batch's tokens, not its 4D mask


def test_a_run_with_neftune_trains_and_takes_its_hook_off(tmp_path, monkeypatch) -> None:
    from lora_studio.core.training import setup as setup_module

    built = []
    real = setup_module.build_run

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr("lora_studio.core.training.trainer.build_run", spy)
    result = train(_lm_run(tmp_path, ["Tom had a ball.", "The sun was warm."] * 3,
                           training={"neftune_alpha": 5.0}), lambda e: None)
    assert result.status == "finished"
    embedding = built[0].model.get_input_embeddings()
    assert not embedding._forward_hooks  # removed when the run ended

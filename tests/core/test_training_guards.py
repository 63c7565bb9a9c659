"""Guards: NaN stops cleanly (or skips), out of memory leaves the process able to train again."""

import math
import textwrap

import torch
from run_configs import digits_run, final_tensors

from lora_studio.core.run_config import ModelConfig
from lora_studio.core.training import Failed, Finished, TrainingWarning, latest_checkpoint, train

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    class Flaky(nn.Module):
        """A digits classifier whose output turns NaN (or runs out of memory) on chosen forward calls."""
        image_mode = "L"

        def __init__(self, bad_calls, error):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
            self.calls, self.bad_calls, self.error = 0, bad_calls, error

        def forward(self, x):
            self.calls += 1
            out = self.body(x)
            if self.training and self.calls in self.bad_calls:
                if self.error:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
                return out * float("nan")
            return out

    def nan_at_fifth():
        return Flaky({5}, error=False)

    def oom_at_third():
        return Flaky({3}, error=True)
''')


def _flaky(tmp_path, factory: str, **training):
    (tmp_path / "flaky.py").write_text(FACTORY)
    config = digits_run(tmp_path / "run", checkpoint_every=1, **training)
    return config.replace(model=ModelConfig(source="python", name=f"{tmp_path / 'flaky.py'}:{factory}"),
                          lora=config.lora.replace(targets=["body.1"]))


def test_nan_loss_stops_without_a_poisoned_checkpoint(tmp_path) -> None:
    events = []
    result = train(_flaky(tmp_path, "nan_at_fifth"), events.append)
    assert result.status == "failed"
    failure = next(e for e in events if isinstance(e, Failed))
    assert failure.kind == "nonfinite" and "NaN" in failure.message and failure.step == 4
    assert latest_checkpoint(tmp_path / "run").name == "step-00000004"  # the last good state, nothing later
    assert all(torch.isfinite(t).all() for t in final_tensors(tmp_path / "run").values())
    assert not any(isinstance(e, Finished) for e in events)


def test_nan_loss_can_skip_the_step_instead(tmp_path) -> None:
    events = []
    result = train(_flaky(tmp_path, "nan_at_fifth", nonfinite="skip"), events.append)
    assert result.status == "finished" and result.steps == 8
    assert [e.step for e in events if isinstance(e, TrainingWarning) and "skipped" in e.message] == [5]
    assert math.isfinite(result.final_loss)
    assert all(torch.isfinite(t).all() for t in final_tensors(tmp_path / "run").values())


def test_out_of_memory_gives_advice_and_a_new_run_starts(tmp_path) -> None:
    events = []
    result = train(_flaky(tmp_path, "oom_at_third"), events.append)
    assert result.status == "failed"
    failure = next(e for e in events if isinstance(e, Failed))
    assert failure.kind == "out-of-memory"
    assert "batch_size" in failure.message and "gradient_checkpointing" in failure.message
    again = train(digits_run(tmp_path / "again", max_steps=2))
    assert again.status == "finished"

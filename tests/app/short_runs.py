"""Short runs of the digits demo for the run and history panel tests (a second or two on a CPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lora_studio.core import RunConfig, demo_config

RUN_PANEL_SIZE = (1100, 760)  # room for the plots, the summary card and the side tabs


def shown_run_panel(qtbot, session):
    """A Train tab on ``session``, shown, its message boxes off (a test's run ends it with
    ``stop_and_wait``)."""
    from lora_studio.app.panels.run_panel import RunPanel

    widget = RunPanel(session)
    widget.show_dialogs = False
    qtbot.addWidget(widget)
    widget.resize(*RUN_PANEL_SIZE)
    widget.show()
    return widget


def short_digits(out: Path, steps: int = 20, **training) -> RunConfig:
    """The digits demo: ``steps`` steps on 256 digits, metrics every step, an evaluation every 10."""
    config = demo_config("digits", output_dir=out, steps=steps)
    settings = dict(batch_size=16, log_every=1, eval_every=10, checkpoint_every=0, device="cpu")
    settings.update(training)
    return config.replace(
        data=dataclasses.replace(config.data, max_samples=256),
        training=dataclasses.replace(config.training, **settings),
    )


def missing_data(out: Path) -> RunConfig:
    """The text demo pointed at a CSV file that does not exist: the run fails before training."""
    config = demo_config("text", output_dir=out, steps=5)
    return config.replace(data=dataclasses.replace(config.data, train=str(out.parent / "missing.csv")))

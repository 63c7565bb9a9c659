"""Render the studio's main states to PNG for the README: ``python packaging/render_screenshots.py``.

Offscreen, on the digits demo: the model loaded (tree, settings, counts), the Data tab,
a run training (live curves), and the export dialog after a merged export with its
verification figure.  The PNGs go to ``resources/screenshots/`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

OUT = Path(__file__).resolve().parent.parent / "resources" / "screenshots"
SIZE = (1400, 860)


def _wait_until(app, condition, timeout_s: float) -> bool:
    """Turn the event loop until ``condition()`` or the timeout."""
    deadline = time.perf_counter() + timeout_s
    while not condition() and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()
    return condition()


def render(out: Path, steps: int = 300) -> list[Path]:
    """Drive the window through its main states and save one PNG per state; returns the paths."""
    import torch
    from PySide6.QtWidgets import QApplication

    torch.set_num_threads(1)  # a shared CPU: one thread trains fastest and leaves the UI room
    app = QApplication.instance() or QApplication(sys.argv[:1])
    from lora_studio.app.dialogs.export_dialog import ExportDialog
    from lora_studio.app.main_window import MainWindow
    from lora_studio.app.resources import app_icon
    from lora_studio.core import EvalMetrics

    app.setWindowIcon(app_icon())
    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    window = MainWindow()
    window.resize(*SIZE)
    window.show()

    def shot(widget, name: str) -> None:
        app.processEvents()
        path = out / f"{name}.png"
        if not widget.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        saved.append(path)

    window.model_panel.open_demo("digits")
    if not _wait_until(app, lambda: window.session.loaded is not None, 120):
        raise RuntimeError("the digits demo did not load")
    run_dir = Path(tempfile.mkdtemp(prefix="lora-studio-shots-"))
    window.session.try_update("output", dir=str(run_dir / "run"))
    window.tabs.setCurrentWidget(window.run_panel)
    shot(window, "model_loaded")

    window.tabs.setCurrentWidget(window.data_panel)
    _wait_until(app, lambda: not window.data_panel.is_reading(), 30)
    shot(window, "data_tab")

    window.tabs.setCurrentWidget(window.run_panel)
    evals: list[EvalMetrics] = []
    window.session.sig_run_event.connect(lambda e: evals.append(e) if isinstance(e, EvalMetrics) else None)
    config = window.session.training_copy()
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, max_steps=steps))
    window.run_panel.start_run(config)
    # Mid-run: after the evaluation at step 100, so curves and an accuracy point are on screen.
    _wait_until(app, lambda: any(e.step >= 100 for e in evals), 180)
    _wait_until(app, lambda: False, 1.0)  # one more plot refresh
    shot(window, "training")
    _wait_until(app, lambda: not window.run_panel.is_running(), 300)
    _wait_until(app, lambda: False, 1.0)
    shot(window, "trained")

    dialog = ExportDialog(window.session, window.run_panel.trained_model(), window)
    dialog.show()
    dialog.export_merged_model()
    _wait_until(app, lambda: not dialog.is_busy(), 120)
    shot(dialog, "export_dialog")
    dialog.close()
    window.close()
    return saved


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNG files")
    parser.add_argument("--steps", type=int, default=300, help="steps of the demo run shown")
    args = parser.parse_args()
    for path in render(args.out, args.steps):
        print(path)

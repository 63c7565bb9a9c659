"""Render the studio's main states to PNG for the README: ``python packaging/render_screenshots.py``.

At 1366x768 (a common laptop screen; ``--size`` to change), in the light and the dark theme: the
Digits demo loaded (tree, settings, counts), its Data tab, a run training (live curves) and
trained (with its samples and its confusion matrix), the Try tab on rotated digit pictures (base
against adapted), the History tab after a rank study (final result against rank), the export dialog
after a merged export with its verification figure; the Text demo (MiniLM, a real transformers
model) while it trains and its Try tab on typed sentences; and the Story demo (a small GPT-2)
while it trains, with its samples, and its Try tab generating base and adapted side by side.
The PNGs go to ``resources/screenshots/`` (``--out`` to change): ``NAME.png`` in the light
theme, ``NAME_dark.png`` in the dark one.

Two ways to run it:

* offscreen (the default when no display is set): each state is the window's own rendering
  (``QWidget.grab``), at exactly ``--size``;
* on a real X display (``--real-window``, e.g. under ``Xvfb :99 -screen 0 1366x768x24`` with a
  window manager): the window is shown maximized by the window manager and each shot is the
  screen itself (title bar, frame and all), what a user of that screen sees.

The user's own settings (theme, recent projects, window layout) are not touched: the renderer
keeps its QSettings in a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "resources" / "screenshots"
SIZE = (1366, 768)
THEMES = ("light", "dark")
STUDY_RANKS = (1, 4, 16)  # the History shot's rank study (the digits demo trains each in seconds)


def _wait_until(app, condition, timeout_s: float) -> bool:
    """Turn the event loop until ``condition()`` or the timeout."""
    deadline = time.perf_counter() + timeout_s
    while not condition() and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()
    return condition()


class Shooter:
    """Saves a widget (offscreen) or the screen (a real window) as ``out/NAME[_dark].png``."""

    def __init__(self, app, out: Path, real_window: bool) -> None:
        self.app, self.out, self.real_window = app, out, real_window
        self.saved: list[Path] = []

    def __call__(self, widget, name: str, theme: str) -> Path:
        _wait_until(self.app, lambda: False, 0.4)  # a plot refresh and the window manager's repaint
        path = self.out / (f"{name}.png" if theme == "light" else f"{name}_{theme}.png")
        if self.real_window:
            # The whole screen: the window manager's frame and title are part of what a user sees.
            image = widget.screen().grabWindow(0)
        else:
            image = widget.grab()
        if not image.save(str(path)):
            raise OSError(f"could not write {path}")
        self.saved.append(path)
        return path


def _window(app, size: tuple[int, int], real_window: bool, theme: str):
    from PySide6.QtCore import Qt

    from lora_studio.app.main_window import MainWindow

    window = MainWindow()
    window.confirm_unsaved = lambda *_args: True  # its demo projects are throwaway: never ask to save them
    window.set_theme(theme)
    if real_window:
        window.showMaximized()  # the window manager fits it to the screen (its title bar included)
    else:
        window.setWindowState(Qt.WindowState.WindowNoState)
        window.resize(*size)
        window.show()
    _wait_until(app, lambda: window.isVisible(), 10)
    return window


def _open_demo(app, window, demo: str, run_dir: Path) -> None:
    loaded: list[object] = []
    window.session.sig_model_loaded.connect(lambda *args: loaded.append(args))
    window.model_panel.open_demo(demo)
    # The previous model stays loaded until the new one is there: wait for the new one's signal.
    if not _wait_until(app, lambda: bool(loaded), 300):
        raise RuntimeError(f"the {demo} demo did not load")
    window.session.try_update("output", dir=str(run_dir / demo))
    # The counts are computed off the UI thread: wait for them (they read "—" until then).
    _wait_until(app, lambda: window.counts_panel.total_label.text() not in ("—", ""), 30)


def _train(app, window, steps: int | None, shot_at_step: int, on_shot) -> None:
    """Start a run (as the Start button does) and call ``on_shot()`` once an evaluation at or after
    ``shot_at_step`` is on screen; returns when the run has ended."""
    from lora_studio.core import EvalMetrics

    evals: list[EvalMetrics] = []
    window.session.sig_run_event.connect(lambda e: evals.append(e) if isinstance(e, EvalMetrics) else None)
    window.tabs.setCurrentWidget(window.run_panel)
    config = window.session.training_copy()
    if steps is not None:
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, max_steps=steps))
    window.run_panel.start_run(config)
    _wait_until(app, lambda: any(e.step >= shot_at_step for e in evals), 600)
    _wait_until(app, lambda: False, 1.0)  # one more plot refresh
    on_shot()
    _wait_until(app, lambda: not window.run_panel.is_running(), 900)
    _wait_until(app, lambda: False, 1.0)


TRY_SENTENCES = (  # typed into the text demo's Try tab: one per topic of resources/demo/sentences.csv, and a mix
    "the striker scored twice before half time",
    "the new phone ships with a faster chip",
    "a bowl of noodles with garlic and fresh lemon",
    "heavy rain is expected across the north tonight",
    "the goalkeeper's app crashed during the vote",
)
STORY_PROMPT = "Once upon a time"


def _digit_pictures(folder: Path, count: int = 8) -> list[Path]:
    """PNG pictures of rotated validation digits (the demo's new domain), white ink on black, 64x64."""
    import torch
    from PIL import Image

    from lora_studio.core.data.digits import digits_split, load_digits_tensors

    images, labels = load_digits_tensors("rotate")
    _, validation = digits_split(len(labels))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in validation[:count].tolist():
        pixels = (images[index, 0] * 255).round().to(torch.uint8).numpy()
        path = folder / f"digit_{index}_label_{int(labels[index])}.png"
        Image.fromarray(pixels, mode="L").resize((64, 64), Image.Resampling.NEAREST).save(path)
        paths.append(path)
    return paths


def _try(app, window, fill) -> None:
    """Show the Try tab on the newest source (the run just finished), fill its inputs, run, wait."""
    panel = window.try_panel
    window.tabs.setCurrentWidget(panel)
    _wait_until(app, lambda: panel.runner.current() is not None, 120)
    fill(panel)
    panel.run()
    _wait_until(app, lambda: False, 0.3)
    _wait_until(app, lambda: not panel.runner.is_busy(), 300)


def render(out: Path, steps: int = 300, size: tuple[int, int] = SIZE, themes: tuple[str, ...] = THEMES,
           real_window: bool = False, text_demo: bool = True) -> list[Path]:
    """Drive the window through its main states in each theme and save one PNG per state; returns the paths."""
    import torch
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    torch.set_num_threads(1)  # a shared CPU: one thread trains fastest and leaves the UI room
    settings_dir = Path(tempfile.mkdtemp(prefix="lora-studio-shots-settings-"))
    for settings_format in (QSettings.Format.IniFormat, QSettings.Format.NativeFormat):
        QSettings.setPath(settings_format, QSettings.Scope.UserScope, str(settings_dir))
    app = QApplication.instance() or QApplication(sys.argv[:1])
    from lora_studio.app.state.project_files import APPLICATION, ORGANIZATION

    app.setOrganizationName(ORGANIZATION)  # as the studio names itself: its QSettings, in the temporary folder
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("LoRA Studio")
    from lora_studio.app.dialogs.export_dialog import ExportDialog
    from lora_studio.app.resources import app_icon

    app.setWindowIcon(app_icon())
    out.mkdir(parents=True, exist_ok=True)
    shot = Shooter(app, out, real_window)
    windows = []  # kept until the end: their worker threads are idle, never destroyed while running
    for theme in themes:
        run_dir = Path(tempfile.mkdtemp(prefix="lora-studio-shots-"))
        window = _window(app, size, real_window, theme)
        _open_demo(app, window, "digits", run_dir)
        window.tabs.setCurrentWidget(window.run_panel)
        shot(window, "model_loaded", theme)

        window.tabs.setCurrentWidget(window.data_panel)
        _wait_until(app, lambda: not window.data_panel.is_reading(), 30)
        shot(window, "data_tab", theme)

        # Mid-run: after the evaluation at step 100, so curves and an accuracy point are on screen.
        _train(app, window, steps, 100, lambda: shot(window, "training", theme))
        shot(window, "trained", theme)
        side = window.run_panel.side_tabs
        side.setCurrentIndex(window.run_panel.confusion_tab)
        shot(window, "trained_confusion", theme)
        side.setCurrentIndex(window.run_panel.samples_tab)
        shot(window, "trained_samples", theme)

        pictures = _digit_pictures(run_dir / "pictures")
        _try(app, window, lambda panel: (panel.clear_images(), panel.add_images(pictures)))
        shot(window, "try_digits", theme)

        if theme == "light":
            window.tabs.setCurrentWidget(window.run_panel)
            dialog = ExportDialog(window.session, window.run_panel.trained_model(), window)
            dialog.show()
            dialog.export_merged_model()
            _wait_until(app, lambda: not dialog.is_busy(), 120)
            if real_window:
                shot(window, "export_dialog", theme)
            else:
                shot(dialog, "export_dialog", theme)
            dialog.close()

        # A rank study from the History tab: when its runs end, History shows final result against rank.
        history = window.history_panel
        window.tabs.setCurrentWidget(history)
        finished: list[object] = []
        history.queue.sig_batch_finished.connect(finished.append)
        history.queue_study(list(STUDY_RANKS))
        if not _wait_until(app, lambda: bool(finished), 900):
            raise RuntimeError("the rank study did not finish")
        shot(window, "history", theme)

        if text_demo:  # a real transformers model: long layer names, the top-12 layer chart
            _open_demo(app, window, "text", run_dir)
            _train(app, window, None, 20, lambda: shot(window, "training_text", theme))
            _try(app, window, lambda panel: panel.inputs_edit.setPlainText("\n".join(TRY_SENTENCES)))
            shot(window, "try_text", theme)

        # A causal LM: its samples (prompt -> text at each evaluation) while it trains, then base and
        # adapted generating side by side from one prompt.
        _open_demo(app, window, "story", run_dir)
        window.run_panel.side_tabs.setCurrentIndex(window.run_panel.samples_tab)
        _train(app, window, None, 60, lambda: shot(window, "training_story", theme))

        def fill_prompt(panel) -> None:
            panel.prompt_edit.setPlainText(STORY_PROMPT)
            panel.temperature.setValue(0.0)  # greedy: the shot shows each side's most likely text
            panel.max_new_tokens.setValue(60)

        _try(app, window, fill_prompt)
        shot(window, "try_story", theme)
        # Hidden, not closed: closing would ask about the unsaved demo project (a modal question).
        window.hide()
        windows.append(window)
        _wait_until(app, lambda: False, 0.5)
    return shot.saved


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNG files")
    parser.add_argument("--steps", type=int, default=300, help="steps of the digits runs shown")
    parser.add_argument("--size", type=_size, default=SIZE, help="window size offscreen, e.g. 1366x768")
    parser.add_argument("--themes", default=",".join(THEMES), help="themes to render, e.g. light,dark")
    parser.add_argument("--real-window", action="store_true",
                        help="show the window on the X display in $DISPLAY and shoot the screen")
    parser.add_argument("--no-text-demo", action="store_true", help="skip the MiniLM (transformers) run")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb" if args.real_window else "offscreen")
    for path in render(args.out, args.steps, args.size, tuple(args.themes.split(",")), args.real_window,
                       not args.no_text_demo):
        print(path)

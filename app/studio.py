"""Open the studio window: ``lora-studio``, ``lora-studio studio [--demo digits|text|story] [PROJECT.toml]``,
``lora-studio-gui`` or ``python -m lora_studio.app``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lora_studio.core import DEMOS

from .platform_check import EXIT_MISSING_LIBRARIES, check_platform_libraries


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the ``studio`` command."""
    parser = argparse.ArgumentParser(prog="lora-studio studio", description="Open the LoRA Studio window.")
    parser.add_argument("project", nargs="?", help="a project (RUN.toml) to open")
    parser.add_argument("--demo", choices=DEMOS, help="open a built-in demo, loaded and ready to train")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Start the Qt application with the main window; returns the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else sys.argv[1:])
    # Before Qt loads its platform plugin: a missing system library gets its package name, not Qt's
    # misleading "xcb-cursor0" message (see platform_check).
    missing = check_platform_libraries()
    if missing is not None:
        print(missing.message(), file=sys.stderr)
        return EXIT_MISSING_LIBRARIES
    from PySide6.QtWidgets import QApplication

    from .error_hook import WindowErrorHook
    from .main_window import MainWindow
    from .state.project_files import APPLICATION, ORGANIZATION

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("LoRA Studio")
    try:
        from .resources import app_icon

        app.setWindowIcon(app_icon())
    except (ImportError, FileNotFoundError):
        pass  # an icon is nice to have; the window works without it
    window = MainWindow()
    WindowErrorHook(window, save_work=window.autosaver.save_if_modified).install()
    window.show()
    if window.offer_restore():  # the last session ended with unsaved changes: they come first
        pass
    elif args.project:
        error = window.open_project_file(args.project)
        if error:
            print(f"lora-studio studio: {error}", file=sys.stderr)
    elif args.demo:
        window.model_panel.open_demo(args.demo)
    return app.exec()

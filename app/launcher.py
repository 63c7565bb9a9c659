"""The ``lora-studio`` command: the window with no arguments (or ``studio ...``), the engine's CLI otherwise.

``core/`` must never import Qt, so the console script points here; the CLI's subcommands
(``train``, ``inspect``, ``demo``...) run without loading Qt at all.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

STUDIO_COMMAND = "studio"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch: ``[]`` or ``studio ...`` opens the window; anything else goes to core's ``cli_main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] == STUDIO_COMMAND:
        from .studio import main as studio_main

        return studio_main(args[1:])
    from lora_studio.core import cli_main

    if args[0] in ("-h", "--help"):
        try:
            cli_main(args)
        except SystemExit:  # argparse exits after printing the help
            pass
        print("\nWith no command, or `studio [--demo digits|text|story] [PROJECT.toml]`, lora-studio opens the window.")
        return 0
    return cli_main(args)

"""``python -m lora_studio.app [studio options]`` opens the studio."""

import sys

from .studio import main

raise SystemExit(main(sys.argv[1:]))

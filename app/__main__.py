"""``python -m lora_studio.app`` opens the studio."""

from .studio import main

raise SystemExit(main())

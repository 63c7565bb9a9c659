"""``python -m lora_studio.core`` runs the CLI; this is also what torchrun launches::

    torchrun --nproc_per_node 2 -m lora_studio.core train RUN.toml
"""

from .cli import main

raise SystemExit(main())

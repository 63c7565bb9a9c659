"""The bundle's entry script: PyInstaller starts here and opens the studio window."""

from lora_studio.app.studio import main

raise SystemExit(main())

"""LoRA Studio's data files, installed as the package ``lora_studio.resources``.

Nothing here is code the studio imports for behaviour: the package exists so the icons,
style sheets and demo files ship inside the wheel (setuptools package-data) and are found
through :mod:`importlib.resources` wherever the studio is installed — a source checkout, an
editable install, a wheel, or a PyInstaller bundle.  The window reads them through
``lora_studio.app.resources``; the engine finds ``demo/`` beside ``core/``.
"""

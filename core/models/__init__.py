"""Model sources: torchvision by name, transformers by hub id or folder, a user's factory, the demos.

Every source returns a :class:`LoadedModel` and can build on the ``meta`` device for
browsing (the layer tree and every count, no weights allocated)::

    loaded = load_model(ModelConfig(source="torchvision", name="resnet18", weights="random"), num_classes=3)
    loaded.model, loaded.head   # resnet18 with a 3-class 'fc', which trains with the adapter
"""

from .bnb_checkpoint import stored_quantization
from .demo_models import DEMO_NAMES, DigitsNet, load_demo_model, minilm_folder
from .heads import find_head, replace_head
from .loaded_model import LoadedModel
from .loading import build_on_meta, infer_task, load_model, parse_model_spec
from .python_factory import load_python_model
from .torchvision_models import load_torchvision, torchvision_names
from .transformers_models import load_transformers

__all__ = [
    "DEMO_NAMES",
    "DigitsNet",
    "LoadedModel",
    "build_on_meta",
    "find_head",
    "infer_task",
    "load_demo_model",
    "load_model",
    "load_python_model",
    "load_torchvision",
    "load_transformers",
    "minilm_folder",
    "parse_model_spec",
    "replace_head",
    "stored_quantization",
    "torchvision_names",
]

"""Running a model on a user's own inputs: base and adapted side by side (the Try tab, ``predict``,
``generate``, and the samples a run evaluates while it trains)."""

from .generation import GeneratedPiece, GenerationSettings, generate_stream, generate_text
from .inputs import inputs_from_table
from .predictions import LabelScore, OutputSummary, Prediction, label_names_of, predict

__all__ = [
    "GeneratedPiece",
    "GenerationSettings",
    "LabelScore",
    "OutputSummary",
    "Prediction",
    "generate_stream",
    "generate_text",
    "inputs_from_table",
    "label_names_of",
    "predict",
]

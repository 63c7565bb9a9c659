"""Standard LoRA (Hu et al., 2021), with rank-stabilised scaling as an option (``use_rslora``)."""

from .registry import Variant, register_variant


class Lora(Variant):
    name = "lora"
    title = "LoRA"
    description = (
        "Low-Rank Adaptation: the frozen weight W is used as is and a trainable low-rank update "
        "(alpha/r)·B·A is added beside it. B starts at zero, so training starts from the base model "
        "exactly. The update merges into W for inference at no extra cost. With rsLoRA (use_rslora) the "
        "scale is alpha/sqrt(r), which keeps learning stable at high ranks."
    )
    combinable = True
    paper = (
        "Hu et al., 'LoRA: Low-Rank Adaptation of Large Language Models', ICLR 2022 (arXiv:2106.09685); "
        "Kalajdzievski, 'A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA', 2023 (arXiv:2312.03732)"
    )


register_variant(Lora())

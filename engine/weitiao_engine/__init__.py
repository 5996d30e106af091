"""weitiao's training and inference engine: a thin layer over PyTorch, transformers and PEFT."""

__version__ = "0.1.0"

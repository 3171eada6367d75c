"""Interoperability: weights from PyTorch's nn modules and from pretrained Hugging Face checkpoints."""

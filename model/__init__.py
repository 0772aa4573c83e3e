"""The mask CNN, its training (Ray Train), evaluation and inference."""

from speech_enhance.model.net import MaskCNN, build_model, load_model, save_model

__all__ = ["MaskCNN", "build_model", "load_model", "save_model"]

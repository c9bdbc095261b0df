"""Model families and the ``create_model`` factory."""

from __future__ import annotations

from hybrid.models.cnn import CNN, CNNConfig
from hybrid.models.registry import create_model, get_family, list_models, model_config, register_model

register_model("cnn", CNNConfig, CNN, input_columns=("pixels",))

__all__ = ["CNN", "CNNConfig", "create_model", "get_family", "list_models", "model_config", "register_model"]

"""The PE vision tower in PyTorch: model, checkpoint loading and preprocessing."""

from pe_export.model.factory import LoadedModel, ModelSource, WeightSource, build_model, load_model, random_init_
from pe_export.model.pe import PEVisionTower

__all__ = ["LoadedModel", "ModelSource", "PEVisionTower", "WeightSource", "build_model", "load_model", "random_init_"]

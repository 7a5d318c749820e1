"""The PE vision tower in PyTorch: model, checkpoint loading and preprocessing."""

from pe_export.model.factory import LoadedModel, build_model, load_model, load_source, random_init_
from pe_export.model.pe import PEVisionTower
from pe_export.source import ModelSource, WeightSource

__all__ = ["LoadedModel", "ModelSource", "PEVisionTower", "WeightSource", "build_model", "load_model", "load_source", "random_init_"]

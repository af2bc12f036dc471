"""Backbones: timm models as data (levels, named modules), weights, the model catalog, fetching."""

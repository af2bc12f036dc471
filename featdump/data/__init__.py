"""Inputs: discovering images, decoding them to RGB, datasets and batch loaders."""

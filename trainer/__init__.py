"""Workstation trainer: VAEs for sensor data, threshold calibration and evaluation (PyTorch)."""

__version__ = "0.1.0"

"""Edge anomaly-detection agent for factory gateways (runs on onnxruntime + numpy, never torch)."""

__version__ = "0.1.0"

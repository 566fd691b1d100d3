"""Turns trained runs into signed, quantized ONNX bundles for the edge agent."""

"""Inference workers: the Ray actor that runs the model on batches (inference) and its device
handling (device: GPU pinning, memory growth, threads, precision)."""

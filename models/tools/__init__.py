"""Tooling around the model, apart from the inference library: weight conversion from other
frameworks' files (torchvision state dicts, Keras 2 HDF5 weights) into maskstream's .npz, and
evaluation. Nothing here is imported by `models` at inference time."""

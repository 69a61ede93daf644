"""Tools around the model, apart from the inference library: weight conversion from other
frameworks' files (torchvision state dicts, Keras 2 HDF5 weights) into the project's .npz
(`convert.py`, `keras_h5.py`), and COCO evaluation with pycocotools (`evaluate.py`). The library
(`models`) never imports these; they import the library.
"""

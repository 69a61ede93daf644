"""Tools around the model: weight conversion (torchvision, Keras) into the project's .npz format
and evaluation. `convert.py` reads a torchvision Mask R-CNN state dict (`python -m
models.tools.convert torchvision SRC.pth DST.npz`); `evaluate.py` runs a model over a COCO data
set and scores it with pycocotools (`python -m models.tools.evaluate --config C --weights W --data
DIR`). The library (`models`) never imports these; they import the library.
"""

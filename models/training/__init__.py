"""Training the model: `batches.py` is the training input (examples from a COCO data set through
the one augmentation path, placed on a fixed canvas and batched, so the step compiles once, and
resumable at any step); `trainer.py` is the trainer (the compiled step on the model's own
`MaskRCNN.losses`, AdamW or SGD, warm-up and cosine learning rate, checkpoints and resume,
starting from other weights); `train.py` is the command line (`python -m models.training.train
--config C --data DIR --out RUN`). The losses themselves live beside the stages they train
(`models/rpn.py`, `models/roi_heads.py`).
"""

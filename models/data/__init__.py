"""Data for training and evaluating the model, apart from the model itself: `coco.py` reads a
COCO-format instance data set (a directory with annotations.json and images/, or
coco:ANNOTATIONS:IMAGES) into checked examples with mini masks and `tf.data` batches;
`augment.py` is the one augmentation path training uses (random resize, left-right flip);
`scenes.py` draws generated street scenes with exact instance masks, the pipeline's synthetic
source and the default model's training and evaluation data (`python -m models.data.scenes write
DIR --images N --seed S`).
"""

"""Write a reference of the seed's own Mask R-CNN (Keras weights .h5 + outputs .npz) for issue 14.

The seed's article defines its prediction graph in Keras 2 (its `nets/mrcnn.py`, `nets/resnet.py`,
`nets/layers.py`, `utils/utils.py`, `utils/anchors.py`, `utils/config.py`; the graph and the layer names
are matterport's Mask_RCNN). This script builds that predict model as the seed's code does, in the Keras 2
API of tf-keras, runs it on real frames and stores what it found. Needs the optional extra
(`pip install -e ".[seed]"`: tf-keras, scikit-image); runs here, never in CI (CI reads the files it
writes). It never imports the `models` package: the reference must not share code with what it checks.

    python bench/seed_reference.py                 # small CI reference -> tests/data/seed_reference_r50w8_512.{h5,npz}
    python bench/seed_reference.py --preset full   # ResNet-101 at 1024, 81 classes -> out/seed_reference_r101_1024.{h5,npz}

The graph, literally (layer names as in the seed, so the .h5 has the seed's layout):
  input_image (B, S, S, 3) molded, input_image_meta (B, 12 + NUM_CLASSES), input_anchors (B, N, 4) ->
  ResNet-50/101 (`conv1`, `bn_conv1`, `res2a_branch2a`, `bn2a_branch2a`, ..., ResNet v1: stride on the first
  1x1 conv of a stage, convs with biases, max-pool 3x3/2 "same") -> FPN (`fpn_c5p5`, `fpn_c4p4`, ...,
  `fpn_p2`..`fpn_p5`, P6 = max-pool 1x1/2 of P5) -> the nested `rpn_model` (`rpn_conv_shared` 512,
  `rpn_class_raw` 2 logits per anchor + softmax, `rpn_bbox_pred`) on P2..P6 -> `ROI` ProposalLayer (deltas
  times RPN_BBOX_STD_DEV, top PRE_NMS_LIMIT anchors by tf.nn.top_k over all levels, apply, clip to [0, 1], one
  NMS at RPN_NMS_THRESHOLD to POST_NMS_ROIS_INFERENCE, zero-padded) -> `roi_align_classifier` PyramidROIAlign
  (level 4 + round(log2(sqrt(hw) / (224 / sqrt(image area)))) clamped to 2..5, crop_and_resize 7x7) ->
  TimeDistributed `mrcnn_class_conv1` (7x7 valid) / `mrcnn_class_bn1` / `mrcnn_class_conv2` (1x1) /
  `mrcnn_class_bn2` -> `mrcnn_class_logits`, `mrcnn_bbox_fc` -> `mrcnn_detection` DetectionLayer (top class
  per RoI, class-specific deltas times BBOX_STD_DEV, clip to the window, DETECTION_MIN_CONFIDENCE (0: no
  filter), per-class NMS at DETECTION_NMS_THRESHOLD, best DETECTION_MAX_INSTANCES) -> `roi_align_mask`
  14x14 -> `mrcnn_mask_conv1..4` + `mrcnn_mask_bn1..4`, `mrcnn_mask_deconv`, `mrcnn_mask` (sigmoid, per class).
  Batch norm in inference mode (the seed's TRAIN_BN False). Ported from TensorFlow 1 to 2 only in name
  (tf.log -> tf.math.log, tf.sets.set_intersection -> tf.sets.intersection, tf.sparse_tensor_to_dense ->
  tf.sparse.to_dense, tf.to_float -> tf.cast), plus one line tf-keras needs: the ProposalLayer output gets
  the static shape its compute_output_shape declares (Keras 2.1 took it from there; tf-keras infers it by
  tracing, and the padded NMS output has no static row count, which the detection layer's
  tf.range(probs.shape[0]) needs).
The input path is the seed's `mold_inputs`: `resize_image` (scale = max(1, IMAGE_MIN_DIM / short side),
lowered so the long side fits IMAGE_MAX_DIM; `skimage.transform.resize` order 1, mode constant, no
anti-aliasing, preserve_range, cast back to uint8 (truncation); zero padding to a centred IMAGE_MAX_DIM
square), `mold_image` (float32 minus MEAN_PIXEL), `compose_image_meta`, and `get_anchors` (in pixels,
then normalised: (y1, x1, y2 - 1, x2 - 1) / (S - 1)). The output path is its `unmold_detections`:
boxes from the window back to the original frame rounded to whole pixels, zero-area boxes dropped, each
28x28 mask resized to its box with skimage the same way and thresholded at >= 0.5.

The one departure from the seed: WIDTH_MULTIPLIER (1 in the seed) multiplies every channel count the
seed's code hard-codes (the ResNet's, `rpn_conv_shared`'s 512, the mask head's 256), so that a narrow
ResNet-50 fits the CI budget. TOP_DOWN_PYRAMID_SIZE and FPN_CLASSIF_FC_LAYERS_SIZE are seed config values.
The three frames run as one batch (IMAGES_PER_GPU 3; the seed's detect_image uses 1; batch_slice runs the
proposal and detection layers per image either way).

Steps: build the model, give it seeded random weights (one numpy Generator over `model.weights` in order:
conv kernels He-normal, Dense kernels N(0, 0.01), biases N(0, 0.01), batch-norm gamma N(1, 0.1), beta
N(0, 0.1), moving mean 0, variance 1), then condition them as bench/torchvision_reference.py does, so
that the outputs are not degenerate:
  1. the backbone's batch norms take the per-channel mean and variance of their own input on the test
     frames, in forward order (one pass in which each layer first sets its statistics, then normalises);
  2. the RPN's `rpn_class_raw` is scaled (kernel and bias) so that the foreground-minus-background logit
     has std 0.5 over all anchors, `rpn_bbox_pred` so that its deltas have std 1 (before RPN_BBOX_STD_DEV);
  3. the box head's batch norms take their input statistics (on the proposals of step 2);
  4. `mrcnn_class_logits`' kernel is multiplied by the smallest factor of 1, sqrt 2, 2, ... for which every
     frame keeps >= 30 detections after unmolding, all with distinct scores;
  5. the mask head's batch norms take their input statistics (on the detections of step 4).
Then run the model (`model.predict`, as the seed's detect does), unmold, save the weights with Keras's own
`model.save_weights(X.h5)` (the HDF5 layout: layers by name, the nested rpn_model, TimeDistributed
wrappers), load them into a freshly built model with `load_weights(by_name=True)` (as the seed loads
weights) and check that it finds exactly the same detections.

The .npz holds: `config/<NAME>` for every seed config value used (IMAGE_MIN_DIM, ..., WIDTH_MULTIPLIER);
seed, weights (the .h5 file name), versions (tensorflow, tf-keras, scikit-image), the conditioning factors
rpn_class_scale, rpn_bbox_scale, class_logits_scale; image_names, image_sources (file names in
../shared/data, a video frame as "file.avi:index", frames counted from 0 in decoding order), image_sha256
(of each RGB frame), original_sizes (H W); molded_shape (the square input, H W C), windows (y1 x1 y2 x2 in
the molded image), scales, image_metas; and per image NAME: NAME/rois (N, 4) int32 y1 x1 y2 x2 in original
pixels (the seed's output, x2/y2 exclusive), NAME/boxes (N, 4) float32 x1 y1 x2 y2 (the same boxes in
maskstream's order), NAME/boxes_normalized (N, 4) float32 y1 x1 y2 x2 (the detection layer's boxes in the
molded image's normalised coordinates, before rounding), NAME/class_ids (N,) int32, NAME/scores (N,)
float32, NAME/mask_probs (N, 28, 28) float32 (the mask head's probabilities of each detection's class,
before unmolding), NAME/mask_counts (N,) COCO compressed RLE strings of the unmolded masks.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import skimage  # noqa: E402
import skimage.transform  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from detection_summary import print_summary  # noqa: E402  (bench/ is the script's directory)
from pycocotools import mask as mask_utils  # noqa: E402
from tf_keras import backend as K  # noqa: E402
from tf_keras import layers as KL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

MIN_DETECTIONS = 30
RPN_LOGIT_DIFFERENCE_STD = 0.5
RPN_DELTA_STD = 1.0
CLASS_SCALES = [2.0 ** (k / 2) for k in range(0, 29)]   # 1 .. 16384, steps of sqrt(2)
REFERENCE_LIMIT_BYTES = 5 * 2 ** 20
DEFAULT_IMAGES = ["highway_1.jpg", "highway_4.jpg", "pedestrians_720p.avi:100"]


# ----------------------------------------------------------------------------------------------------
# Configuration: the seed's Config (utils/config.py), its names, the inference values
# ----------------------------------------------------------------------------------------------------

class SeedConfig:
    """The seed's configuration class with its attribute names and defaults (inference only)."""
    NAME = "seed"
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1
    BACKBONE = "resnet101"                      # resnet50 or resnet101
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    TOP_DOWN_PYRAMID_SIZE = 256
    NUM_CLASSES = 81                            # COCO: background + 80
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]             # width / height
    RPN_ANCHOR_STRIDE = 1
    RPN_NMS_THRESHOLD = 0.7
    PRE_NMS_LIMIT = 6000
    POST_NMS_ROIS_INFERENCE = 1000
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    MASK_SHAPE = [28, 28]
    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3
    TRAIN_BN = False
    WIDTH_MULTIPLIER = 1.0                      # not in the seed: see the module docstring

    def __init__(self, **values):
        for key, value in values.items():
            if not hasattr(type(self), key):
                raise SystemExit(f"unknown seed config value {key}")
            setattr(self, key, value)
        self.BATCH_SIZE = self.IMAGES_PER_GPU * self.GPU_COUNT
        self.IMAGE_SHAPE = np.array([self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM, self.IMAGE_CHANNEL_COUNT])
        self.IMAGE_META_SIZE = 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES

    def values(self) -> dict:
        return {k: getattr(self, k) for k in dir(self) if k.isupper()}

    def width(self, channels: int) -> int:
        """A channel count the seed's code hard-codes, times WIDTH_MULTIPLIER."""
        return int(round(channels * self.WIDTH_MULTIPLIER))


PRESETS = {
    # The CI reference: a narrow ResNet-50 at 512 (WIDTH_MULTIPLIER 1/8: stem 8 channels, RPN conv 64,
    # mask head 32), FPN 32 channels, box head 128.
    "small": dict(config=dict(BACKBONE="resnet50", WIDTH_MULTIPLIER=0.125, IMAGE_MIN_DIM=512, IMAGE_MAX_DIM=512,
                              TOP_DOWN_PYRAMID_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=128),
                  out=ROOT / "tests" / "data" / "seed_reference_r50w8_512"),
    # The seed's own COCO model: ResNet-101, 800/1024, 81 classes; too large to commit.
    "full": dict(config=dict(BACKBONE="resnet101"), out=ROOT / "out" / "seed_reference_r101_1024"),
}


# ----------------------------------------------------------------------------------------------------
# Backbone: ResNet-50/101 as the seed's nets/resnet.py (Keras ResNet v1 with matterport's names)
# ----------------------------------------------------------------------------------------------------

def bottleneck(x, filters, stage: int, block: str, train_bn: bool, strides=None):
    """A bottleneck block; with `strides` it is a conv_block (projection shortcut `res{stage}{block}_branch1`,
    stride on the first 1x1), without it an identity_block."""
    f1, f2, f3 = filters
    conv_name, bn_name = f"res{stage}{block}_branch", f"bn{stage}{block}_branch"
    y = KL.Conv2D(f1, (1, 1), strides=strides or (1, 1), name=conv_name + "2a", use_bias=True)(x)
    y = KL.BatchNormalization(name=bn_name + "2a")(y, training=train_bn)
    y = KL.Activation("relu")(y)
    y = KL.Conv2D(f2, (3, 3), padding="same", name=conv_name + "2b", use_bias=True)(y)
    y = KL.BatchNormalization(name=bn_name + "2b")(y, training=train_bn)
    y = KL.Activation("relu")(y)
    y = KL.Conv2D(f3, (1, 1), name=conv_name + "2c", use_bias=True)(y)
    y = KL.BatchNormalization(name=bn_name + "2c")(y, training=train_bn)
    if strides is None:
        shortcut = x
    else:
        shortcut = KL.Conv2D(f3, (1, 1), strides=strides, name=conv_name + "1", use_bias=True)(x)
        shortcut = KL.BatchNormalization(name=bn_name + "1")(shortcut, training=train_bn)
    y = KL.Add()([y, shortcut])
    return KL.Activation("relu", name=f"res{stage}{block}_out")(y)


def resnet_graph(input_image, config: SeedConfig):
    """-> [C1, C2, C3, C4, C5]; stage 4 has 5 identity blocks (resnet50) or 22 (resnet101)."""
    train_bn = config.TRAIN_BN
    w = config.width
    x = KL.ZeroPadding2D((3, 3))(input_image)
    x = KL.Conv2D(w(64), (7, 7), strides=(2, 2), name="conv1", use_bias=True)(x)
    x = KL.BatchNormalization(name="bn_conv1")(x, training=train_bn)
    x = KL.Activation("relu")(x)
    c1 = x = KL.MaxPooling2D((3, 3), strides=(2, 2), padding="same")(x)
    identity_blocks = {"resnet50": 5, "resnet101": 22}[config.BACKBONE]
    stages = [(2, 64, 2, (1, 1)), (3, 128, 3, (2, 2)), (4, 256, identity_blocks, (2, 2)), (5, 512, 2, (2, 2))]
    outputs = [c1]
    for stage, planes, count, strides in stages:
        filters = [w(planes), w(planes), w(4 * planes)]
        x = bottleneck(x, filters, stage, "a", train_bn, strides=strides)
        for i in range(count):
            x = bottleneck(x, filters, stage, chr(ord("b") + i), train_bn)
        outputs.append(x)
    return outputs


# ----------------------------------------------------------------------------------------------------
# Proposal, pyramid RoIAlign and detection layers (the seed's nets/layers.py)
# ----------------------------------------------------------------------------------------------------

def batch_slice(inputs, graph_fn, batch_size: int, names=None):
    """Run graph_fn on each batch item of `inputs` (a list of tensors) and stack the results."""
    if not isinstance(inputs, list):
        inputs = [inputs]
    per_item = []
    for i in range(batch_size):
        result = graph_fn(*[x[i] for x in inputs])
        per_item.append(result if isinstance(result, (tuple, list)) else [result])
    names = names or [None] * len(per_item[0])
    stacked = [tf.stack(list(parts), axis=0, name=name) for parts, name in zip(zip(*per_item), names)]
    return stacked[0] if len(stacked) == 1 else stacked


def apply_box_deltas_graph(boxes, deltas):
    """boxes (N, 4) y1 x1 y2 x2, deltas (N, 4) dy dx log(dh) log(dw) -> refined boxes (N, 4)."""
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    center_y = boxes[:, 0] + 0.5 * height
    center_x = boxes[:, 1] + 0.5 * width
    center_y += deltas[:, 0] * height
    center_x += deltas[:, 1] * width
    height *= tf.exp(deltas[:, 2])
    width *= tf.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return tf.stack([y1, x1, y1 + height, x1 + width], axis=1, name="apply_box_deltas_out")


def clip_boxes_graph(boxes, window):
    """boxes (N, 4) clipped to window (4,) y1 x1 y2 x2."""
    wy1, wx1, wy2, wx2 = tf.split(window, 4)
    y1, x1, y2, x2 = tf.split(boxes, 4, axis=1)
    y1 = tf.maximum(tf.minimum(y1, wy2), wy1)
    x1 = tf.maximum(tf.minimum(x1, wx2), wx1)
    y2 = tf.maximum(tf.minimum(y2, wy2), wy1)
    x2 = tf.maximum(tf.minimum(x2, wx2), wx1)
    clipped = tf.concat([y1, x1, y2, x2], axis=1, name="clipped_boxes")
    clipped.set_shape((clipped.shape[0], 4))
    return clipped


class ProposalLayer(KL.Layer):
    """[rpn_probs (B, N, 2), rpn_bbox (B, N, 4), anchors (B, N, 4) normalised] -> proposals
    (B, proposal_count, 4) normalised y1 x1 y2 x2, zero-padded."""

    def __init__(self, proposal_count, nms_threshold, config=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.proposal_count = proposal_count
        self.nms_threshold = nms_threshold

    def call(self, inputs):
        cfg = self.config
        scores = inputs[0][:, :, 1]
        deltas = inputs[1] * np.reshape(cfg.RPN_BBOX_STD_DEV, [1, 1, 4])
        anchors = inputs[2]
        pre_nms_limit = tf.minimum(cfg.PRE_NMS_LIMIT, tf.shape(anchors)[1])
        ix = tf.nn.top_k(scores, pre_nms_limit, sorted=True, name="top_anchors").indices
        scores = batch_slice([scores, ix], lambda x, y: tf.gather(x, y), cfg.IMAGES_PER_GPU)
        deltas = batch_slice([deltas, ix], lambda x, y: tf.gather(x, y), cfg.IMAGES_PER_GPU)
        pre_nms_anchors = batch_slice([anchors, ix], lambda a, x: tf.gather(a, x), cfg.IMAGES_PER_GPU,
                                      names=["pre_nms_anchors"])
        boxes = batch_slice([pre_nms_anchors, deltas], apply_box_deltas_graph, cfg.IMAGES_PER_GPU,
                            names=["refined_anchors"])
        window = np.array([0, 0, 1, 1], dtype=np.float32)
        boxes = batch_slice(boxes, lambda x: clip_boxes_graph(x, window), cfg.IMAGES_PER_GPU,
                            names=["refined_anchors_clipped"])

        def nms(boxes, scores):
            indices = tf.image.non_max_suppression(boxes, scores, self.proposal_count, self.nms_threshold,
                                                   name="rpn_non_max_suppression")
            proposals = tf.gather(boxes, indices)
            padding = tf.maximum(self.proposal_count - tf.shape(proposals)[0], 0)
            return tf.pad(proposals, [(0, padding), (0, 0)])

        proposals = batch_slice([boxes, scores], nms, cfg.IMAGES_PER_GPU)
        proposals.set_shape(self.compute_output_shape(None))   # the tf-keras port's one addition
        return proposals

    def compute_output_shape(self, input_shape):
        return (None, self.proposal_count, 4)


def parse_image_meta_graph(meta):
    """meta (B, 12 + NUM_CLASSES) -> its fields (see compose_image_meta)."""
    return {"image_id": meta[:, 0], "original_image_shape": meta[:, 1:4], "image_shape": meta[:, 4:7],
            "window": meta[:, 7:11], "scale": meta[:, 11], "active_class_ids": meta[:, 12:]}


def norm_boxes_graph(boxes, shape):
    """Pixel boxes (y2, x2 exclusive) -> normalised: (y1, x1, y2 - 1, x2 - 1) / (shape - 1)."""
    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - tf.constant(1.0)
    shift = tf.constant([0., 0., 1., 1.])
    return tf.divide(boxes - shift, scale)


class PyramidROIAlign(KL.Layer):
    """[boxes (B, R, 4) normalised, image_meta, P2, P3, P4, P5] -> (B, R, pool, pool, C)."""

    def __init__(self, pool_shape, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(pool_shape)

    def call(self, inputs):
        boxes, image_meta, feature_maps = inputs[0], inputs[1], inputs[2:]
        y1, x1, y2, x2 = tf.split(boxes, 4, axis=2)
        h = y2 - y1
        w = x2 - x1
        image_shape = parse_image_meta_graph(image_meta)["image_shape"][0]
        image_area = tf.cast(image_shape[0] * image_shape[1], tf.float32)
        roi_level = tf.math.log(tf.sqrt(h * w) / (224.0 / tf.sqrt(image_area))) / tf.math.log(2.0)
        roi_level = tf.minimum(5, tf.maximum(2, 4 + tf.cast(tf.round(roi_level), tf.int32)))
        roi_level = tf.squeeze(roi_level, 2)
        pooled, box_to_level = [], []
        for i, level in enumerate(range(2, 6)):
            ix = tf.where(tf.equal(roi_level, level))
            level_boxes = tf.stop_gradient(tf.gather_nd(boxes, ix))
            box_indices = tf.stop_gradient(tf.cast(ix[:, 0], tf.int32))
            box_to_level.append(ix)
            pooled.append(tf.image.crop_and_resize(feature_maps[i], level_boxes, box_indices, self.pool_shape,
                                                   method="bilinear"))
        pooled = tf.concat(pooled, axis=0)
        # Back to the boxes' order: sort by (batch item, box index).
        box_to_level = tf.concat(box_to_level, axis=0)
        box_range = tf.expand_dims(tf.range(tf.shape(box_to_level)[0]), 1)
        box_to_level = tf.concat([tf.cast(box_to_level, tf.int32), box_range], axis=1)
        sorting_tensor = box_to_level[:, 0] * 100000 + box_to_level[:, 1]
        ix = tf.nn.top_k(sorting_tensor, k=tf.shape(box_to_level)[0]).indices[::-1]
        pooled = tf.gather(pooled, tf.gather(box_to_level[:, 2], ix))
        shape = tf.concat([tf.shape(boxes)[:2], tf.shape(pooled)[1:]], axis=0)
        return tf.reshape(pooled, shape)

    def compute_output_shape(self, input_shape):
        return input_shape[0][:2] + self.pool_shape + (input_shape[2][-1],)


def refine_detections_graph(rois, probs, deltas, window, config):
    """One image: rois (R, 4), probs (R, K), deltas (R, K, 4), window (4,) normalised ->
    (DETECTION_MAX_INSTANCES, 6) y1 x1 y2 x2 class_id score, zero-padded."""
    class_ids = tf.argmax(probs, axis=1, output_type=tf.int32)
    indices = tf.stack([tf.range(probs.shape[0]), class_ids], axis=1)
    class_scores = tf.gather_nd(probs, indices)
    deltas_specific = tf.gather_nd(deltas, indices)
    refined_rois = apply_box_deltas_graph(rois, deltas_specific * config.BBOX_STD_DEV)
    refined_rois = clip_boxes_graph(refined_rois, window)
    keep = tf.where(class_ids > 0)[:, 0]
    if config.DETECTION_MIN_CONFIDENCE:   # 0 (or None) means no confidence filter
        conf_keep = tf.where(class_scores >= config.DETECTION_MIN_CONFIDENCE)[:, 0]
        keep = tf.sets.intersection(tf.expand_dims(keep, 0), tf.expand_dims(conf_keep, 0))
        keep = tf.sparse.to_dense(keep)[0]
    pre_nms_class_ids = tf.gather(class_ids, keep)
    pre_nms_scores = tf.gather(class_scores, keep)
    pre_nms_rois = tf.gather(refined_rois, keep)
    unique_pre_nms_class_ids = tf.unique(pre_nms_class_ids)[0]

    @tf.autograph.experimental.do_not_convert   # tf.map_fn traces it as written (TF 1 had no AutoGraph)
    def nms_keep_map(class_id):
        ixs = tf.where(tf.equal(pre_nms_class_ids, class_id))[:, 0]
        class_keep = tf.image.non_max_suppression(tf.gather(pre_nms_rois, ixs), tf.gather(pre_nms_scores, ixs),
                                                  max_output_size=config.DETECTION_MAX_INSTANCES,
                                                  iou_threshold=config.DETECTION_NMS_THRESHOLD)
        class_keep = tf.gather(keep, tf.gather(ixs, class_keep))
        gap = config.DETECTION_MAX_INSTANCES - tf.shape(class_keep)[0]
        class_keep = tf.pad(class_keep, [(0, gap)], mode="CONSTANT", constant_values=-1)
        class_keep.set_shape([config.DETECTION_MAX_INSTANCES])
        return class_keep

    nms_keep = tf.map_fn(nms_keep_map, unique_pre_nms_class_ids, fn_output_signature=tf.int64)
    nms_keep = tf.reshape(nms_keep, [-1])
    nms_keep = tf.gather(nms_keep, tf.where(nms_keep > -1)[:, 0])
    keep = tf.sets.intersection(tf.expand_dims(keep, 0), tf.expand_dims(nms_keep, 0))
    keep = tf.sparse.to_dense(keep)[0]
    class_scores_keep = tf.gather(class_scores, keep)
    num_keep = tf.minimum(tf.shape(class_scores_keep)[0], config.DETECTION_MAX_INSTANCES)
    top_ids = tf.nn.top_k(class_scores_keep, k=num_keep, sorted=True)[1]
    keep = tf.gather(keep, top_ids)
    detections = tf.concat([tf.gather(refined_rois, keep),
                            tf.cast(tf.gather(class_ids, keep), tf.float32)[..., tf.newaxis],
                            tf.gather(class_scores, keep)[..., tf.newaxis]], axis=1)
    gap = config.DETECTION_MAX_INSTANCES - tf.shape(detections)[0]
    return tf.pad(detections, [(0, gap), (0, 0)], "CONSTANT")


class DetectionLayer(KL.Layer):
    """[rois, mrcnn_class, mrcnn_bbox, image_meta] -> (B, DETECTION_MAX_INSTANCES, 6) normalised."""

    def __init__(self, config=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config

    def call(self, inputs):
        rois, mrcnn_class, mrcnn_bbox, image_meta = inputs
        m = parse_image_meta_graph(image_meta)
        window = norm_boxes_graph(m["window"], m["image_shape"][0][:2])
        detections = batch_slice([rois, mrcnn_class, mrcnn_bbox, window],
                                 lambda x, y, w, z: refine_detections_graph(x, y, w, z, self.config),
                                 self.config.IMAGES_PER_GPU)
        return tf.reshape(detections, [self.config.BATCH_SIZE, self.config.DETECTION_MAX_INSTANCES, 6])

    def compute_output_shape(self, input_shape):
        return (None, self.config.DETECTION_MAX_INSTANCES, 6)


# ----------------------------------------------------------------------------------------------------
# RPN, heads and the predict model (the seed's nets/mrcnn.py)
# ----------------------------------------------------------------------------------------------------

def build_rpn_model(anchors_per_location: int, depth: int, config: SeedConfig):
    """The nested `rpn_model`: feature map -> [logits (B, A*, 2), probabilities (B, A*, 2), deltas (B, A*, 4)]."""
    feature_map = KL.Input(shape=[None, None, depth], name="input_rpn_feature_map")
    shared = KL.Conv2D(config.width(512), (3, 3), padding="same", activation="relu",
                       name="rpn_conv_shared")(feature_map)
    x = KL.Conv2D(2 * anchors_per_location, (1, 1), padding="valid", activation="linear",
                  name="rpn_class_raw")(shared)
    rpn_class_logits = KL.Reshape([-1, 2])(x)
    rpn_probs = KL.Activation("softmax", name="rpn_class_xxx")(rpn_class_logits)
    x = KL.Conv2D(anchors_per_location * 4, (1, 1), padding="valid", activation="linear",
                  name="rpn_bbox_pred")(shared)
    rpn_bbox = KL.Reshape([-1, 4])(x)
    return keras.Model([feature_map], [rpn_class_logits, rpn_probs, rpn_bbox], name="rpn_model")


def fpn_classifier_graph(rois, feature_maps, image_meta, config: SeedConfig):
    """-> class logits (B, R, K), probabilities (B, R, K), deltas (B, R, K, 4)."""
    pool, fc, k = config.POOL_SIZE, config.FPN_CLASSIF_FC_LAYERS_SIZE, config.NUM_CLASSES
    x = PyramidROIAlign([pool, pool], name="roi_align_classifier")([rois, image_meta] + feature_maps)
    x = KL.TimeDistributed(KL.Conv2D(fc, (pool, pool), padding="valid"), name="mrcnn_class_conv1")(x)
    x = KL.TimeDistributed(KL.BatchNormalization(), name="mrcnn_class_bn1")(x, training=config.TRAIN_BN)
    x = KL.Activation("relu")(x)
    x = KL.TimeDistributed(KL.Conv2D(fc, (1, 1)), name="mrcnn_class_conv2")(x)
    x = KL.TimeDistributed(KL.BatchNormalization(), name="mrcnn_class_bn2")(x, training=config.TRAIN_BN)
    x = KL.Activation("relu")(x)
    shared = KL.Lambda(lambda t: K.squeeze(K.squeeze(t, 3), 2), name="pool_squeeze")(x)
    mrcnn_class_logits = KL.TimeDistributed(KL.Dense(k), name="mrcnn_class_logits")(shared)
    mrcnn_probs = KL.TimeDistributed(KL.Activation("softmax"), name="mrcnn_class")(mrcnn_class_logits)
    x = KL.TimeDistributed(KL.Dense(k * 4, activation="linear"), name="mrcnn_bbox_fc")(shared)
    mrcnn_bbox = KL.Reshape((-1, k, 4), name="mrcnn_bbox")(x)
    return mrcnn_class_logits, mrcnn_probs, mrcnn_bbox


def build_fpn_mask_graph(rois, feature_maps, image_meta, config: SeedConfig):
    """-> mask probabilities (B, R, 28, 28, K)."""
    pool, channels = config.MASK_POOL_SIZE, config.width(256)
    x = PyramidROIAlign([pool, pool], name="roi_align_mask")([rois, image_meta] + feature_maps)
    for i in range(1, 5):
        x = KL.TimeDistributed(KL.Conv2D(channels, (3, 3), padding="same"), name=f"mrcnn_mask_conv{i}")(x)
        x = KL.TimeDistributed(KL.BatchNormalization(), name=f"mrcnn_mask_bn{i}")(x, training=config.TRAIN_BN)
        x = KL.Activation("relu")(x)
    x = KL.TimeDistributed(KL.Conv2DTranspose(channels, (2, 2), strides=2, activation="relu"),
                           name="mrcnn_mask_deconv")(x)
    return KL.TimeDistributed(KL.Conv2D(config.NUM_CLASSES, (1, 1), strides=1, activation="sigmoid"),
                              name="mrcnn_mask")(x)


def get_predict_model(config: SeedConfig) -> keras.Model:
    """The seed's inference model: [molded images, image metas, anchors] -> [detections, mrcnn_class,
    mrcnn_bbox, mrcnn_mask, rpn_rois, rpn_class, rpn_bbox]."""
    h, w = config.IMAGE_SHAPE[:2]
    if h % 64 or w % 64:
        raise SystemExit("Image size must be dividable by 2 at least 6 times")
    input_image = KL.Input(shape=[None, None, config.IMAGE_SHAPE[2]], name="input_image")
    input_image_meta = KL.Input(shape=[config.IMAGE_META_SIZE], name="input_image_meta")
    input_anchors = KL.Input(shape=[None, 4], name="input_anchors")
    _, c2, c3, c4, c5 = resnet_graph(input_image, config)
    size = config.TOP_DOWN_PYRAMID_SIZE
    p5 = KL.Conv2D(size, (1, 1), name="fpn_c5p5")(c5)
    p4 = KL.Add(name="fpn_p4add")([KL.UpSampling2D(size=(2, 2), name="fpn_p5upsampled")(p5),
                                   KL.Conv2D(size, (1, 1), name="fpn_c4p4")(c4)])
    p3 = KL.Add(name="fpn_p3add")([KL.UpSampling2D(size=(2, 2), name="fpn_p4upsampled")(p4),
                                   KL.Conv2D(size, (1, 1), name="fpn_c3p3")(c3)])
    p2 = KL.Add(name="fpn_p2add")([KL.UpSampling2D(size=(2, 2), name="fpn_p3upsampled")(p3),
                                   KL.Conv2D(size, (1, 1), name="fpn_c2p2")(c2)])
    p2 = KL.Conv2D(size, (3, 3), padding="SAME", name="fpn_p2")(p2)
    p3 = KL.Conv2D(size, (3, 3), padding="SAME", name="fpn_p3")(p3)
    p4 = KL.Conv2D(size, (3, 3), padding="SAME", name="fpn_p4")(p4)
    p5 = KL.Conv2D(size, (3, 3), padding="SAME", name="fpn_p5")(p5)
    p6 = KL.MaxPooling2D(pool_size=(1, 1), strides=2, name="fpn_p6")(p5)
    rpn_feature_maps = [p2, p3, p4, p5, p6]
    mrcnn_feature_maps = [p2, p3, p4, p5]
    rpn = build_rpn_model(len(config.RPN_ANCHOR_RATIOS), size, config)
    per_level = [rpn([p]) for p in rpn_feature_maps]
    rpn_class_logits, rpn_class, rpn_bbox = [KL.Concatenate(axis=1, name=name)(list(outputs)) for name, outputs
                                             in zip(["rpn_class_logits", "rpn_class", "rpn_bbox"], zip(*per_level))]
    rpn_rois = ProposalLayer(proposal_count=config.POST_NMS_ROIS_INFERENCE, nms_threshold=config.RPN_NMS_THRESHOLD,
                             name="ROI", config=config)([rpn_class, rpn_bbox, input_anchors])
    _, mrcnn_class, mrcnn_bbox = fpn_classifier_graph(rpn_rois, mrcnn_feature_maps, input_image_meta, config)
    detections = DetectionLayer(config, name="mrcnn_detection")([rpn_rois, mrcnn_class, mrcnn_bbox, input_image_meta])
    detection_boxes = KL.Lambda(lambda x: x[..., :4])(detections)
    mrcnn_mask = build_fpn_mask_graph(detection_boxes, mrcnn_feature_maps, input_image_meta, config)
    return keras.Model([input_image, input_image_meta, input_anchors],
                       [detections, mrcnn_class, mrcnn_bbox, mrcnn_mask, rpn_rois, rpn_class, rpn_bbox],
                       name="mask_rcnn")


# ----------------------------------------------------------------------------------------------------
# Input and output paths (the seed's utils/utils.py and utils/anchors.py), numpy and scikit-image
# ----------------------------------------------------------------------------------------------------

def resize(image, output_shape, preserve_range=False):
    """The seed's skimage wrapper: bilinear, constant (zero) border, clipped, no anti-aliasing."""
    return skimage.transform.resize(image, output_shape, order=1, mode="constant", cval=0, clip=True,
                                    preserve_range=preserve_range, anti_aliasing=False, anti_aliasing_sigma=None)


def resize_image(image: np.ndarray, min_dim: int, max_dim: int, min_scale: float, mode: str):
    """-> (image resized and zero-padded to max_dim x max_dim, in the input's dtype; window (y1, x1, y2, x2);
    scale). Only the seed's "square" mode."""
    if mode != "square":
        raise SystemExit(f"IMAGE_RESIZE_MODE {mode}: only square is built here")
    image_dtype = image.dtype
    h, w = image.shape[:2]
    scale = 1
    if min_dim:
        scale = max(1, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and round(max(h, w) * scale) > max_dim:
        scale = max_dim / max(h, w)
    if scale != 1:
        image = resize(image, (round(h * scale), round(w * scale)), preserve_range=True)
    h, w = image.shape[:2]
    top, left = (max_dim - h) // 2, (max_dim - w) // 2
    padding = [(top, max_dim - h - top), (left, max_dim - w - left), (0, 0)]
    image = np.pad(image, padding, mode="constant", constant_values=0)
    return image.astype(image_dtype), (top, left, h + top, w + left), scale


def mold_image(images, config: SeedConfig):
    return images.astype(np.float32) - config.MEAN_PIXEL


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale, active_class_ids):
    return np.array([image_id] + list(original_image_shape) + list(image_shape) + list(window) + [scale]
                    + list(active_class_ids))


def mold_inputs(config: SeedConfig, images: list[np.ndarray]):
    """RGB uint8 frames -> molded images (B, S, S, 3), image metas (B, 12 + K), windows (B, 4), scales (B,)."""
    molded, metas, windows, scales = [], [], [], []
    for image in images:
        resized, window, scale = resize_image(image, config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM,
                                              config.IMAGE_MIN_SCALE, config.IMAGE_RESIZE_MODE)
        resized = mold_image(resized, config)
        metas.append(compose_image_meta(0, image.shape, resized.shape, window, scale,
                                        np.zeros([config.NUM_CLASSES], dtype=np.int32)))
        molded.append(resized)
        windows.append(window)
        scales.append(scale)
    return np.stack(molded), np.stack(metas), np.stack(windows), np.array(scales)


def norm_boxes(boxes, shape):
    h, w = shape
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.divide(boxes - shift, scale).astype(np.float32)


def denorm_boxes(boxes, shape):
    h, w = shape
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.around(np.multiply(boxes, scale) + shift).astype(np.int32)


def generate_anchors(scales, ratios, shape, feature_stride, anchor_stride):
    """Anchors (y1, x1, y2, x2) in pixels, centred on every anchor_stride-th cell of one level;
    order: location row-major, then ratio (width / height)."""
    scales, ratios = np.meshgrid(np.array(scales), np.array(ratios))
    scales, ratios = scales.flatten(), ratios.flatten()
    heights = scales / np.sqrt(ratios)
    widths = scales * np.sqrt(ratios)
    shifts_y = np.arange(0, shape[0], anchor_stride) * feature_stride
    shifts_x = np.arange(0, shape[1], anchor_stride) * feature_stride
    shifts_x, shifts_y = np.meshgrid(shifts_x, shifts_y)
    box_widths, box_centers_x = np.meshgrid(widths, shifts_x)
    box_heights, box_centers_y = np.meshgrid(heights, shifts_y)
    box_centers = np.stack([box_centers_y, box_centers_x], axis=2).reshape([-1, 2])
    box_sizes = np.stack([box_heights, box_widths], axis=2).reshape([-1, 2])
    return np.concatenate([box_centers - 0.5 * box_sizes, box_centers + 0.5 * box_sizes], axis=1)


def get_anchors(config: SeedConfig, image_shape) -> np.ndarray:
    """All levels' anchors, normalised, (N, 4)."""
    shapes = [[int(np.ceil(image_shape[0] / s)), int(np.ceil(image_shape[1] / s))] for s in config.BACKBONE_STRIDES]
    anchors = np.concatenate([generate_anchors(config.RPN_ANCHOR_SCALES[i], config.RPN_ANCHOR_RATIOS, shapes[i],
                                               config.BACKBONE_STRIDES[i], config.RPN_ANCHOR_STRIDE)
                              for i in range(len(config.RPN_ANCHOR_SCALES))], axis=0)
    return norm_boxes(anchors, image_shape[:2])


def unmold_boxes(detections, original_image_shape, image_shape, window):
    """One image's detections (D, 6) -> boxes (N, 4) int32 y1 x1 y2 x2 in original pixels, class ids, scores,
    and the rows of `detections` they come from (zero padding and zero-area boxes dropped)."""
    zero_ix = np.where(detections[:, 4] == 0)[0]
    n = zero_ix[0] if zero_ix.shape[0] > 0 else detections.shape[0]
    boxes = detections[:n, :4]
    class_ids = detections[:n, 4].astype(np.int32)
    scores = detections[:n, 5]
    wy1, wx1, wy2, wx2 = norm_boxes(window, image_shape[:2])
    shift = np.array([wy1, wx1, wy1, wx1])
    scale = np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    boxes = denorm_boxes(np.divide(boxes - shift, scale), original_image_shape[:2])
    rows = np.arange(n)
    keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    return boxes[keep], class_ids[keep], scores[keep], rows[keep]


def unmold_mask(mask, bbox, image_shape):
    """mask (28, 28) probabilities, bbox y1 x1 y2 x2 -> (H, W) bool: resized to the box, >= 0.5."""
    y1, x1, y2, x2 = bbox
    mask = resize(mask, (y2 - y1, x2 - x1))
    full_mask = np.zeros(image_shape[:2], dtype=bool)
    full_mask[y1:y2, x1:x2] = np.where(mask >= 0.5, 1, 0).astype(bool)
    return full_mask


def unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape, window) -> dict:
    """One image: detections (D, 6), mrcnn_mask (D, 28, 28, K) -> rois, class_ids, scores, full masks (N, H, W),
    plus (for the reference) the normalised boxes and the mask probabilities of the kept rows."""
    boxes, class_ids, scores, rows = unmold_boxes(detections, original_image_shape, image_shape, window)
    probs = mrcnn_mask[rows, :, :, class_ids]
    masks = np.stack([unmold_mask(m, b, original_image_shape) for m, b in zip(probs, boxes)]) if len(rows) \
        else np.zeros((0,) + tuple(original_image_shape[:2]), bool)
    return {"rois": boxes, "class_ids": class_ids, "scores": scores, "masks": masks,
            "boxes_normalized": detections[rows, :4], "mask_probs": probs}


# ----------------------------------------------------------------------------------------------------
# Seeded weights and their conditioning
# ----------------------------------------------------------------------------------------------------

def seed_weights(model: keras.Model, seed: int) -> None:
    """Random but deterministic values for every weight, in `model.weights` order (see the docstring)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        kind = variable.name.split("/")[-1].split(":")[0]
        shape = tuple(variable.shape)
        if kind == "kernel" and len(shape) == 2:
            value = rng.standard_normal(shape) * 0.01
        elif kind == "kernel":
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif kind == "bias":
            value = rng.standard_normal(shape) * 0.01
        elif kind == "gamma":
            value = 1.0 + rng.standard_normal(shape) * 0.1
        elif kind == "beta":
            value = rng.standard_normal(shape) * 0.1
        elif kind == "moving_mean":
            value = np.zeros(shape)
        elif kind == "moving_variance":
            value = np.ones(shape)
        else:
            raise SystemExit(f"unexpected weight {variable.name}")
        variable.assign(value.astype(np.float32))


def batch_norms(model: keras.Model, prefix: str = "") -> list[KL.BatchNormalization]:
    """The BatchNormalization layers whose (outer) name starts with prefix, unwrapping TimeDistributed."""
    found = []
    for layer in model.layers:
        inner = layer.layer if isinstance(layer, KL.TimeDistributed) else layer
        if isinstance(inner, KL.BatchNormalization) and layer.name.startswith(prefix):
            found.append(inner)
    return found


@contextlib.contextmanager
def statistics_from_inputs(layers: list[KL.BatchNormalization]):
    """While active (in eager calls), each layer first sets its moving mean and variance to the per-channel
    mean and variance of its input (over every axis but the last), then normalises as usual."""
    for bn in layers:
        def call(inputs, *args, _bn=bn, _call=bn.call, **kwargs):
            mean, variance = tf.nn.moments(inputs, axes=list(range(inputs.shape.rank - 1)))
            _bn.moving_mean.assign(mean)
            _bn.moving_variance.assign(variance)
            return _call(inputs, *args, **kwargs)
        bn.call = call
    try:
        yield
    finally:
        for bn in layers:
            del bn.call


def condition_batch_norms(model: keras.Model, inputs: list, prefix: str) -> int:
    """One eager pass of the whole model in which the batch norms named prefix* take their input statistics."""
    layers = batch_norms(model, prefix)
    with statistics_from_inputs(layers):
        model([tf.constant(x, tf.float32) for x in inputs], training=False)
    return len(layers)


def scale_layer(layer, factor: float, bias: bool = True) -> None:
    kernel, *rest = layer.get_weights()
    layer.set_weights([kernel * np.float32(factor)] + ([rest[0] * np.float32(factor)] if bias else rest))


def scale_rpn_predictors(model: keras.Model, inputs: list) -> dict[str, float]:
    """Scale rpn_class_raw and rpn_bbox_pred so their outputs have the stds of RPN_* above."""
    probe = keras.Model(model.inputs, [model.get_layer(f"fpn_p{k}").output for k in range(2, 7)])
    rpn = model.get_layer("rpn_model")
    outputs = [rpn(tf.constant(p)) for p in probe.predict(inputs, batch_size=len(inputs[0]), verbose=0)]
    logits = np.concatenate([o[0].numpy() for o in outputs], axis=1)
    deltas = np.concatenate([o[2].numpy() for o in outputs], axis=1)
    scales = {"rpn_class_scale": RPN_LOGIT_DIFFERENCE_STD / float(np.std(logits[..., 1] - logits[..., 0])),
              "rpn_bbox_scale": RPN_DELTA_STD / float(np.std(deltas))}
    scale_layer(rpn.get_layer("rpn_class_raw"), scales["rpn_class_scale"])
    scale_layer(rpn.get_layer("rpn_bbox_pred"), scales["rpn_bbox_scale"])
    return scales


def detections_are_spread(results: list[dict]) -> bool:
    """Every image keeps >= MIN_DETECTIONS detections, no two with the same score."""
    return all(len(r["scores"]) >= MIN_DETECTIONS and len(np.unique(r["scores"])) == len(r["scores"])
               for r in results)


def spread_class_logits(model: keras.Model, inputs: list, windows, frames: list[np.ndarray]) -> float:
    """Multiply mrcnn_class_logits' kernel by the smallest CLASS_SCALES factor giving spread detections."""
    names = ["ROI", "pool_squeeze", "mrcnn_bbox"]
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    rois, shared, deltas = probe.predict(inputs, batch_size=len(inputs[0]), verbose=0)
    logits_layer, probs_layer = model.get_layer("mrcnn_class_logits"), model.get_layer("mrcnn_class")
    detection_layer = model.get_layer("mrcnn_detection")
    kernel, bias = logits_layer.get_weights()
    for scale in CLASS_SCALES:
        logits_layer.set_weights([kernel * np.float32(scale), bias])
        probs = probs_layer(logits_layer(tf.constant(shared)))
        detections = detection_layer([tf.constant(rois), probs, tf.constant(deltas), tf.constant(inputs[1])]).numpy()
        results = [dict(zip(["rois", "class_ids", "scores"], unmold_boxes(d, f.shape, m.shape, w)[:3]))
                   for d, f, m, w in zip(detections, frames, inputs[0], windows)]
        if detections_are_spread(results):
            return scale
    raise SystemExit(f"no class-logit scale up to {CLASS_SCALES[-1]} gives >= {MIN_DETECTIONS} detections per image")


# ----------------------------------------------------------------------------------------------------
# Running, checking and writing
# ----------------------------------------------------------------------------------------------------

def read_frame(source: str) -> np.ndarray:
    """A still ("name.jpg") or a video frame ("name.avi:index", decoded in order from the start) as RGB uint8."""
    name, _, index = source.partition(":")
    path = Path(name) if Path(name).exists() else DATA / name
    if index:
        capture = cv2.VideoCapture(str(path))
        for _ in range(int(index) + 1):
            ok, bgr = capture.read()
            if not ok:
                raise SystemExit(f"{path}: no frame {index}")
        capture.release()
    else:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{path}: cannot read image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_name(source: str) -> str:
    name, _, index = source.partition(":")
    return Path(name).stem + (f"_{index}" if index else "")


def model_inputs(config: SeedConfig, frames: list[np.ndarray]):
    molded, metas, windows, scales = mold_inputs(config, frames)
    anchors = get_anchors(config, molded[0].shape)
    return [molded, metas, np.broadcast_to(anchors, (len(frames),) + anchors.shape)], windows, scales


def detect(model: keras.Model, inputs: list, windows, frames: list[np.ndarray]) -> list[dict]:
    """The seed's detect: predict on the molded batch, unmold each image."""
    detections, _, _, mrcnn_mask, _, _, _ = model.predict(inputs, batch_size=len(frames), verbose=0)
    return [unmold_detections(detections[i], mrcnn_mask[i], frame.shape, inputs[0][i].shape, windows[i])
            for i, frame in enumerate(frames)]


def encode_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N,) COCO compressed RLE strings."""
    if not len(masks):
        return np.zeros((0,), dtype=str)
    binary = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    return np.array([rle["counts"].decode("ascii") for rle in mask_utils.encode(binary)], dtype=str)


def same_results(a: list[dict], b: list[dict]) -> bool:
    keys = ["rois", "class_ids", "scores", "mask_probs", "masks"]
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in keys)


def write_reference(path: Path, settings: dict, names, sources, frames, inputs, windows, scales, results) -> None:
    arrays = {**{k: np.array(v) for k, v in settings.items()},
              "image_names": np.array(names), "image_sources": np.array(sources),
              "image_sha256": np.array([hashlib.sha256(f.tobytes()).hexdigest() for f in frames]),
              "original_sizes": np.array([f.shape[:2] for f in frames]), "molded_shape": np.array(inputs[0].shape[1:]),
              "windows": np.array(windows), "scales": np.array(scales), "image_metas": inputs[1]}
    for name, r in zip(names, results):
        rois = r["rois"].astype(np.int32)
        arrays.update({f"{name}/rois": rois, f"{name}/boxes": rois[:, [1, 0, 3, 2]].astype(np.float32),
                       f"{name}/boxes_normalized": r["boxes_normalized"].astype(np.float32),
                       f"{name}/class_ids": r["class_ids"].astype(np.int32),
                       f"{name}/scores": r["scores"].astype(np.float32),
                       f"{name}/mask_probs": r["mask_probs"].astype(np.float32),
                       f"{name}/mask_counts": encode_masks(r["masks"])})
    np.savez_compressed(path, **arrays)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-confidence", type=float, default=SeedConfig.DETECTION_MIN_CONFIDENCE,
                        help="DETECTION_MIN_CONFIDENCE (0: no confidence filter, as in the seed's code)")
    parser.add_argument("--images", nargs="+", default=DEFAULT_IMAGES,
                        help='file names in ../shared/data (or paths); a video frame as "file.avi:index"')
    parser.add_argument("--out", type=Path, help="output path without suffix (.h5 and .npz are written)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    preset = PRESETS[args.preset]
    out = args.out or preset["out"]
    out.parent.mkdir(parents=True, exist_ok=True)
    h5_path, npz_path = out.with_suffix(".h5"), out.with_suffix(".npz")

    names, frames = [image_name(s) for s in args.images], [read_frame(s) for s in args.images]
    config = SeedConfig(IMAGES_PER_GPU=len(frames), DETECTION_MIN_CONFIDENCE=args.min_confidence, **preset["config"])
    inputs, windows, scales = model_inputs(config, frames)
    clock = time.perf_counter()
    model = get_predict_model(config)
    print(f"built the {config.BACKBONE} predict model (width x{config.WIDTH_MULTIPLIER}) in "
          f"{time.perf_counter() - clock:.1f} s: {len(model.layers)} layers, {model.count_params():,} weights")
    seed_weights(model, args.seed)

    clock = time.perf_counter()
    count = condition_batch_norms(model, inputs, prefix="bn")
    rpn_scales = scale_rpn_predictors(model, inputs)
    count += condition_batch_norms(model, inputs, prefix="mrcnn_class_bn")
    class_scale = spread_class_logits(model, inputs, windows, frames)
    count += condition_batch_norms(model, inputs, prefix="mrcnn_mask_bn")
    print(f"conditioned {count} batch norms, RPN logits x{rpn_scales['rpn_class_scale']:.4f}, RPN deltas "
          f"x{rpn_scales['rpn_bbox_scale']:.4f}, class logits x{class_scale:.3f} in {time.perf_counter() - clock:.1f} s")

    clock = time.perf_counter()
    results = detect(model, inputs, windows, frames)
    print(f"ran the reference on {len(frames)} frames of {inputs[0].shape[1]}x{inputs[0].shape[2]} in "
          f"{time.perf_counter() - clock:.1f} s (predict, one batch, includes tracing)")
    print_summary(names, [r["scores"] for r in results], [r["class_ids"] for r in results],
                  [r["mask_probs"] for r in results])
    if not detections_are_spread(results):
        raise SystemExit("the full model run does not give spread detections on every image")

    model.save_weights(str(h5_path))
    reloaded = get_predict_model(config)
    reloaded.load_weights(str(h5_path), by_name=True)
    if not same_results(detect(reloaded, inputs, windows, frames), results):
        raise SystemExit(f"{h5_path}: the saved weights do not reproduce the detections")

    settings = {**{f"config/{k}": v for k, v in config.values().items()}, "seed": args.seed,
                "weights": h5_path.name, "rpn_class_scale": rpn_scales["rpn_class_scale"],
                "rpn_bbox_scale": rpn_scales["rpn_bbox_scale"], "class_logits_scale": class_scale,
                "versions": f"tensorflow {tf.__version__}, tf-keras {keras.__version__}, "
                            f"scikit-image {skimage.__version__}"}
    write_reference(npz_path, settings, names, args.images, frames, inputs, windows, scales, results)
    sizes = h5_path.stat().st_size, npz_path.stat().st_size
    print(f"wrote {h5_path} ({sizes[0]:,} bytes) and {npz_path} ({sizes[1]:,} bytes); reloading the .h5 gives "
          "the same detections")
    if args.preset == "small" and sum(sizes) > REFERENCE_LIMIT_BYTES:
        raise SystemExit(f"{sum(sizes)} bytes is over the {REFERENCE_LIMIT_BYTES} byte limit of the CI reference")


if __name__ == "__main__":
    main()

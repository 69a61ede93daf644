"""Preprocessing: frame checks and conversion (numpy), and in-graph normalise, resize, pad.

The sizes follow torchvision's rule (`image_size.py`); the resize is bilinear with half-pixel
centres, and the normalised image is zero-padded at the bottom and right.

Or, with `input.resize: square`, the seed's `mold_inputs`: each frame is resized with scikit-image
exactly as the seed's `resize_image` does and zero-padded, centred, to one square outside the graph
(`mold_square`); the graph then only normalises (`normalize`).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

MIN_FRAME_SIDE = 32


def to_rgb_frame(frame, index: int = 0) -> np.ndarray:
    """Check one frame and return it as a contiguous uint8 (H, W, 3) RGB array.

    Grayscale (H, W) or (H, W, 1) is replicated to three channels; RGBA drops its alpha. An
    empty frame, a non-uint8 array, a wrong rank or channel count, or a side under 32 pixels
    raises ValueError naming the frame.
    """
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame {index}: expected a numpy array, got {type(frame).__name__}")
    if frame.size == 0:
        raise ValueError(f"frame {index}: empty array of shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame {index}: dtype {frame.dtype}, expected uint8 RGB")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3:
        raise ValueError(f"frame {index}: rank {frame.ndim} (shape {frame.shape}), expected (H, W, 3)")
    channels = frame.shape[2]
    if channels == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif channels == 4:
        frame = frame[:, :, :3]
    elif channels != 3:
        raise ValueError(f"frame {index}: {channels} channels, expected 1, 3 or 4")
    if min(frame.shape[:2]) < MIN_FRAME_SIDE:
        raise ValueError(f"frame {index}: {frame.shape[1]}x{frame.shape[0]} is smaller than "
                         f"{MIN_FRAME_SIDE} pixels on a side")
    return np.ascontiguousarray(frame)


def as_frame_list(frames) -> list[np.ndarray]:
    """A list of frames or one (B, H, W, C) array -> list of checked uint8 RGB frames."""
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    elif isinstance(frames, np.ndarray):
        raise ValueError(f"frames: a single array must be (B, H, W, 3), got shape {frames.shape}")
    return [to_rgb_frame(f, i) for i, f in enumerate(frames)]


def normalize_resize_pad(images: tf.Tensor, resized_hw: tuple[int, int], padded_hw: tuple[int, int],
                         mean, std, pixel_scale: float = 255.0) -> tf.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, padded_h, padded_w, 3): (x / pixel_scale - mean) / std, resized
    bilinearly to resized_hw, zero-padded at the bottom and right."""
    x = tf.cast(images, tf.float32) / pixel_scale
    x = (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
    if tuple(resized_hw) != tuple(images.shape[1:3]):
        x = tf.image.resize(x, resized_hw, method="bilinear", antialias=False)
    return tf.pad(x, [[0, 0], [0, padded_hw[0] - resized_hw[0]], [0, padded_hw[1] - resized_hw[1]], [0, 0]])


def resize_like_the_seed(image: np.ndarray, output_hw: tuple[int, int], preserve_range: bool) -> np.ndarray:
    """The seed's scikit-image resize (its utils.resize): bilinear (order 1), the border blending with zeros
    (mode constant), no anti-aliasing, clipped to the input's range. image (H, W) or (H, W, C) ->
    (h, w[, C]): float64 for integer input with preserve_range, float32 for float32 input.

    A colour image is resized channel by channel: the same values as one call on (H, W, C) (the channel
    axis has zoom 1, so its interpolation weights are exactly 1 and 0), in less than half the time."""
    from skimage.transform import resize

    def one(plane):
        return resize(plane, output_hw, order=1, mode="constant", cval=0, clip=True, preserve_range=preserve_range,
                      anti_aliasing=False, anti_aliasing_sigma=None)
    if image.ndim == 2:
        return one(image)
    return np.stack([one(image[:, :, c]) for c in range(image.shape[2])], axis=-1)


def mold_square(frame: np.ndarray, resized_hw: tuple[int, int], side: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (side, side, 3): the seed's resize_image in square mode (resized as
    `resize_like_the_seed`, truncated back to uint8, zero-padded centred: image_size.square_window)."""
    from .image_size import square_window

    if tuple(resized_hw) != frame.shape[:2]:
        frame = resize_like_the_seed(frame, resized_hw, preserve_range=True).astype(np.uint8)
    top, left, _, _ = square_window(resized_hw, side)
    out = np.zeros((side, side, 3), np.uint8)
    out[top:top + resized_hw[0], left:left + resized_hw[1]] = frame
    return out


def normalize(images: tf.Tensor, mean, std, pixel_scale: float) -> tf.Tensor:
    """uint8 (B, S, S, 3) molded squares -> float32 (x / pixel_scale - mean) / std, computed in float64 and
    rounded once, as the seed's mold_image (uint8 as float32 minus the float64 MEAN_PIXEL) gives it."""
    x = tf.cast(images, tf.float64) / pixel_scale
    x = (x - tf.constant(mean, tf.float64)) / tf.constant(std, tf.float64)
    return tf.cast(x, tf.float32)

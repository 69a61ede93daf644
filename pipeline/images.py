"""Frame images on the wire: a frame's pixels as a JPEG, the optional third part of its message.

With ``publish.images: jpeg`` the publisher sends each frame as [topic, header, JPEG]; the
header's ``image`` field says so and gives the JPEG's size, which is the frame's own or, with
``publish.image_max_side``, smaller (the masks keep the frame's size). ``EncodedImage`` is that
part; ``encode_jpeg`` makes it from the frame's RGB pixels and ``EncodedImage.decode`` gives them
back (what the consumer SDK's ``frame.image`` is).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from models.errors import ProtocolError

IMAGE_FORMAT = "jpeg"


@dataclass(frozen=True)
class EncodedImage:
    """A frame's pixels as sent: ``data`` the JPEG bytes, ``width`` x ``height`` its size."""
    width: int
    height: int
    data: bytes = field(repr=False)

    def to_wire(self) -> dict:
        """The header's ``image`` field."""
        return {"format": IMAGE_FORMAT, "width": int(self.width), "height": int(self.height)}

    @classmethod
    def from_wire(cls, described: dict, data: bytes, where: str) -> EncodedImage:
        """The part ``data`` as the header's ``image`` field ``described`` it; a one-line
        ProtocolError (led by ``where``) when that field is malformed."""
        if not isinstance(described, dict) or described.get("format") != IMAGE_FORMAT:
            raise ProtocolError(f"{where}: image field {described!r}: expected format {IMAGE_FORMAT!r}")
        try:
            return cls(int(described["width"]), int(described["height"]), bytes(data))
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"{where}: malformed image field ({type(error).__name__}: {error})") from None

    def decode(self, where: str = "frame") -> np.ndarray:
        """(height, width, 3) uint8 RGB; a one-line ProtocolError (led by ``where``) if the bytes
        are not a JPEG of that size."""
        bgr = cv2.imdecode(np.frombuffer(self.data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ProtocolError(f"{where}: its image part ({len(self.data)} bytes) is not a JPEG")
        if bgr.shape[:2] != (self.height, self.width):
            raise ProtocolError(f"{where}: its image part is a {bgr.shape[1]}x{bgr.shape[0]} JPEG, "
                                f"its header says {self.width}x{self.height}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) shrunk, aspect kept, so that the longer side is at most ``max_side``
    (None: as it is); never larger than the frame, never below 1 pixel."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_jpeg(rgb: np.ndarray, quality: int, max_side: int | None = None) -> EncodedImage:
    """A frame's pixels, (H, W, 3) uint8 RGB, as a JPEG of ``quality`` (1-100), downscaled (area
    averaging) so that its longer side is at most ``max_side``."""
    height, width = rgb.shape[:2]
    size = scaled_size(width, height, max_side)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if size != (width, height):
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ProtocolError(f"a {width}x{height} frame: JPEG encoding failed")
    return EncodedImage(size[0], size[1], data.tobytes())

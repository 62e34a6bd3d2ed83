"""Decode any image file OpenCV (or, failing that, Pillow) reads into uint8 HxWxC, C in {1, 3}.

Every way a file can be bad ends in ImageError with a short reason, never another exception: a long
run reports the file and moves on.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".jp2"}


class ImageError(ValueError):
    pass


def read_image(path: Path) -> np.ndarray:
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot open ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ImageError("empty file (0 bytes)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        image = _read_with_pillow(path)
    return to_uint8_hwc(image)


def _read_with_pillow(path: Path) -> np.ndarray:
    from PIL import Image  # GIF and a few formats OpenCV may lack

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))[:, :, ::-1]  # BGR, as OpenCV gives
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageError(f"not a readable image ({type(exc).__name__})") from None


def to_uint8_hwc(image: np.ndarray) -> np.ndarray:
    """Any decoded array (BGR/BGRA/gray, 8/16-bit/float) -> uint8 RGB or gray with a channel axis."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"unexpected image shape {image.shape}")
    if image.dtype == np.uint16:
        # Keep the top 8 of the bits actually used: 12-bit sensor data in a 16-bit PNG (max 4095)
        # would be nearly black after a plain >> 8.
        shift = max(0, int(image.max()).bit_length() - 8)
        image = (image >> shift).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = image.astype(np.float32)
        hi = float(image.max()) if image.size else 1.0
        image = np.clip(image / (hi if hi > 1.0 else 1.0) * 255.0, 0, 255).astype(np.uint8)
    channels = image.shape[2]
    if channels == 4:
        image = image[:, :, :3]
    elif channels == 2:  # gray + alpha
        image = image[:, :, :1]
    if image.shape[2] == 3:
        image = np.ascontiguousarray(image[:, :, ::-1])  # BGR -> RGB
    return image


def is_gray(image: np.ndarray) -> bool:
    """True for one channel, or three equal channels (gray stored as RGB)."""
    if image.shape[2] == 1:
        return True
    return bool(np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2]))

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


def read_image(path: Path, bits: int | None = None) -> np.ndarray:
    """Decode, turn as EXIF says, and scale to uint8 (16-bit data by the dataset's `bits`, see to_uint8_hwc)."""
    return to_uint8_hwc(decode(path), bits)


def decode(path: Path) -> np.ndarray:
    """The file's pixels as stored (any dtype), turned upright as its EXIF orientation says."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:  # a broken link ends here too: reported like any unreadable file
        raise ImageError(f"cannot open ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ImageError("empty file (0 bytes)")
    # IMREAD_UNCHANGED keeps 16-bit depth and alpha but ignores EXIF orientation: applied below.
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        return _read_with_pillow(path)  # Pillow path: exif_transpose applied there
    return apply_orientation(image, exif_orientation(path))


def exif_orientation(path: Path) -> int:
    """EXIF tag 0x0112 (1 = upright; 2-8 = mirrored and/or rotated), read from the header only."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # no EXIF, or a format Pillow does not know
        return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as a phone shows the photo (Pillow's ImageOps.exif_transpose, on an HxW[xC] array)."""
    turn = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return np.ascontiguousarray(turn(image)) if turn else image


def _read_with_pillow(path: Path) -> np.ndarray:
    from PIL import Image  # GIF and a few formats OpenCV may lack

    try:
        from PIL import ImageOps

        with Image.open(path) as im:
            im.load()
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[:, :, ::-1]  # BGR, as OpenCV gives
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageError(f"not a readable image ({type(exc).__name__})") from None


def bit_depth(image: np.ndarray) -> int:
    """Bits a 16-bit image uses (12 for sensor data stored in 16-bit PNGs, max 4095); 8 otherwise."""
    return max(8, int(image.max()).bit_length()) if image.dtype == np.uint16 and image.size else 8


def to_uint8_hwc(image: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Any decoded array (BGR/BGRA/gray, 8/16-bit/float) -> uint8 RGB or gray with a channel axis.

    16-bit data keeps the top 8 of `bits`, the dataset's bit depth (preprocess measures it on the train
    images), so a dark and a bright image of one sensor stay dark and bright; with bits=None, the
    image's own depth (a lone file, e.g. a preview)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"unexpected image shape {image.shape}")
    if image.dtype == np.uint16:
        shift = max(0, (bits or bit_depth(image)) - 8)
        image = np.minimum(image >> shift, 255).astype(np.uint8)
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

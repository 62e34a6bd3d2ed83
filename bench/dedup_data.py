"""Generated data with known near-duplicates for bench/dedup_quality.py (real pixels, no download).

Every dataset is a list of distinct items plus copies made at the items' NATIVE resolution, before
preprocess, the way scraped competition data has them. Items come from scikit-image's sample photos
(`skimage.data`) and scikit-learn's digits; nothing from any benchmark's test data.

Datasets (each returns `Items`: images, the true group of each image, how each was made, and the
hard negative pairs that must stay apart):
  digits      scikit-learn's 8x8 digits in MNIST framing (20x20 in 28x28), gray
  lookalike   28x28 gray objects: ten classes, each one silhouette (tiny jitter per item) filled with
              a texture cut from one photo (brick, grass, gravel, camera, moon, coins, ...), so items
              of a class differ only in texture; plus full-frame texture crops; hard negatives are the
              same silhouette with another texture, and the same item with one detail changed
  photos      48x48 colour crops of colour photos (astronaut, coffee, chelsea, rocket, retina, ...);
              hard negatives: the same crop recoloured (hue turned or channels swapped)
  scenes      128x128 generated colour scenes (gradient, shapes, texture); hard negatives: the same
              shapes in other colours, and different small objects on one shared background
Copies (TRANSFORMS): exact, shift 1-2 native px, brightness/contrast x0.9-1.1 with clipping, JPEG q70-95,
resize round trip, slight blur, "reshot" (shift 1 px + brightness + JPEG q85), a random combination,
and copy-of-copy (a transform of an earlier copy).

`half` picks the rows of each source photo the crops come from: "top" for calibration, "bottom" for
the reported figures, so the reported images are never the ones a threshold was chosen on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

TRANSFORMS = ("exact", "shift", "brightness", "jpeg", "resize", "blur", "reshot", "combo", "copy_of_copy")
GRAY_SOURCES = ("brick", "grass", "gravel", "camera", "moon", "coins", "clock", "page", "text", "cell")
COLOUR_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry", "hubble_deep_field")


@dataclass
class Items:
    images: list = field(default_factory=list)
    groups: list = field(default_factory=list)  # true group: the item an image is (a copy of)
    kinds: list = field(default_factory=list)  # "original" or the transform that made the copy
    negatives: list = field(default_factory=list)  # (item, item, kind): distinct items that look alike

    def add(self, image: np.ndarray, kind: str = "original", group: int | None = None) -> int:
        self.images.append(image.reshape(image.shape[0], image.shape[1], -1))
        self.groups.append(len(self.groups) if group is None else group)
        self.kinds.append(kind)
        return len(self.images) - 1


def photo(name: str, half: str, gray: bool) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3:
        image = image[:, :, :3]
        if gray:
            image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    h = image.shape[0] // 2
    return np.ascontiguousarray(image[:h] if half == "top" else image[h:])


def detail(image: np.ndarray, where: np.ndarray | None = None) -> float:
    """Std of the fine detail: the image minus its 1 px Gaussian blur (gray levels), over the pixels
    `where` is true (all by default)."""
    x = image.astype(np.float32)
    fine = x - cv2.GaussianBlur(x, (0, 0), 1.0)
    return float((fine if where is None else fine[where]).std())


class Cropper:
    """Crops of one photo that are distinct items: a crop is redrawn when it has no detail (the std of
    what a 1 px blur removes is under `min_detail` gray levels: a patch of sky, a smooth edge; two
    such patches cannot be told apart by anyone) or overlaps an earlier crop of similar zoom by more than two thirds on both axes (that
    would be the same content seen a few output pixels apart: a copy, not a look-alike)."""

    def __init__(self, source: np.ndarray, rng: np.random.Generator, zoom: tuple[float, float], min_detail: float = 6.0):
        self.source, self.rng, self.zoom, self.min_detail, self.taken = source, rng, zoom, min_detail, []

    def __call__(self, side: int) -> np.ndarray | None:
        for _ in range(200):
            f = self.rng.uniform(*self.zoom)
            span = min(int(side * f), self.source.shape[0] - 1, self.source.shape[1] - 1)
            y, x = int(self.rng.integers(0, self.source.shape[0] - span)), int(self.rng.integers(0, self.source.shape[1] - span))
            if any(abs(y - ty) < ts / 3 and abs(x - tx) < ts / 3 and 0.75 < span / ts < 1.33 for ty, tx, ts in self.taken):
                continue
            patch = cv2.resize(self.source[y : y + span, x : x + span], (side, side), interpolation=cv2.INTER_AREA)
            if detail(patch) >= self.min_detail:
                self.taken.append((y, x, span))
                return patch
        return None  # the photo has no more distinct textured crops at this size


# ---------------------------------------------------------------------------------------- copies


def copy_of(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One copy made at native resolution (uint8 HxWxC in, same shape out)."""
    if kind == "exact":
        return image.copy()
    if kind == "reshot":
        return jpeg(brightness(shift(image, rng, 1), rng), 85)
    if kind == "combo":
        for k in rng.choice(["shift", "brightness", "jpeg", "resize", "blur"], int(rng.integers(2, 4)), replace=False):
            image = copy_of(image, str(k), rng)
        return image
    if kind == "shift":
        return shift(image, rng, int(rng.integers(1, 3)))
    if kind == "brightness":
        return brightness(image, rng)
    if kind == "jpeg":
        return jpeg(image, int(rng.integers(70, 96)))
    if kind == "resize":
        h, w = image.shape[:2]
        f = rng.choice([rng.uniform(0.6, 0.9), rng.uniform(1.5, 2.5)])
        size = (max(1, round(w * f)), max(1, round(h * f)))
        mid = cv2.resize(image, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
        return cv2.resize(mid, (w, h), interpolation=cv2.INTER_LINEAR if f < 1 else cv2.INTER_AREA).reshape(image.shape)
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.8)).reshape(image.shape)
    raise ValueError(kind)


def shift(image: np.ndarray, rng: np.random.Generator, pixels: int) -> np.ndarray:
    h, w = image.shape[:2]
    dy, dx = rng.integers(-pixels, pixels + 1, 2)
    if dy == dx == 0:
        dx = pixels
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE).reshape(image.shape)


def brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-12, 12)
    return (image.astype(np.float32) * gain + offset).clip(0, 255).round().astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    bgr = image if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
    out = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return (out if image.shape[2] == 1 else cv2.cvtColor(out, cv2.COLOR_BGR2RGB)).reshape(image.shape)


def inject(items: Items, fraction: float, rng: np.random.Generator) -> Items:
    """1-3 copies of `fraction` of the items (each copy a random transform; copy_of_copy transforms an
    earlier copy of the same item)."""
    originals = len(items.images)
    for g in rng.choice(originals, int(fraction * originals), replace=False):
        made = [items.images[g]]
        for _ in range(rng.integers(1, 4)):
            kind = TRANSFORMS[rng.integers(len(TRANSFORMS))]
            if kind == "copy_of_copy":
                source = made[-1] if len(made) > 1 else copy_of(made[0], "reshot", rng)
                image = copy_of(source, str(rng.choice(["shift", "brightness", "jpeg", "resize", "blur"])), rng)
            else:
                image = copy_of(made[0], kind, rng)
            made.append(image)
            items.add(image, kind, group=int(g))
    return items


# ---------------------------------------------------------------------------------------- datasets


def digits(half: str) -> Items:
    """MNIST-like: each 8x8 digit upscaled to a 20x20 box centred in 28x28 (MNIST's own framing);
    the even-numbered digits for one half, the odd ones for the other."""
    from sklearn.datasets import load_digits

    items = Items()
    for d in load_digits().images[0 if half == "top" else 1 :: 2] * (255.0 / 16.0):
        box = cv2.resize(d.astype(np.float32), (20, 20), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
        items.add(cv2.copyMakeBorder(box, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=0))
    return items


def silhouette(shape: np.ndarray, jitter: np.ndarray, side: int = 28, supersample: int = 4) -> np.ndarray:
    """Anti-aliased mask (float 0..1) of a smooth blob r(theta) = R (1 + sum a_k cos(k theta + phi_k))."""
    big = side * supersample
    radius, harmonics = shape[0] + jitter[0], shape[1:].reshape(-1, 2) + jitter[1:].reshape(-1, 2)
    theta = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    r = radius * (1 + sum(a * np.cos((k + 1) * theta + phi) for k, (a, phi) in enumerate(harmonics)))
    points = np.stack([big / 2 + r * big * np.cos(theta), big / 2 + r * big * np.sin(theta)], 1)
    mask = np.zeros((big, big), np.uint8)
    cv2.fillPoly(mask, [points.round().astype(np.int32)], 255)
    return cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def textured_object(mask: np.ndarray, texture: np.ndarray, background: float) -> np.ndarray:
    """A texture shown through a silhouette on a flat background (texture stretched to 60..255 between
    its 2nd and 98th percentiles)."""
    t = texture.astype(np.float32)
    low, high = np.percentile(t, [2, 98])
    t = 60 + 195 * ((t - low) / max(float(high - low), 1.0)).clip(0, 1)
    return (background * (1 - mask) + t * mask).round().clip(0, 255).astype(np.uint8)


def with_detail(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same item with one small detail changed: a 3-4 px spot or a short stroke inside the object."""
    out = image.copy()
    ys, xs = np.nonzero(mask > 0.9)
    k = rng.integers(len(ys))
    y, x = int(ys[k]), int(xs[k])
    value = 20 if out[y, x] > 128 else 240
    if rng.random() < 0.5:
        cv2.circle(out, (x, y), int(rng.integers(1, 3)), value, -1)
    else:
        end = (int(np.clip(x + rng.integers(-5, 6), 0, 27)), int(np.clip(y + rng.integers(-5, 6), 0, 27)))
        cv2.line(out, (x, y), end, value, 1)
    return out


def lookalike(per_class: int, half: str, rng: np.random.Generator) -> Items:
    """Ten classes of small 28x28 gray look-alikes: in six, one silhouette per class (jittered by 1-2%)
    filled with a texture from that class's photo; in four, full-frame texture crops of the photo.
    A fifth of the objects get a sibling with the very same silhouette and another texture, and a
    tenth a sibling identical but for one detail: the hard negatives."""
    items = Items()
    for c, name in enumerate(GRAY_SOURCES):
        crop = Cropper(photo(name, half, gray=True), rng, (1.0, 5.0))
        background = float(rng.uniform(0, 40))
        shape = np.r_[rng.uniform(0.3, 0.4), np.ravel([(rng.uniform(0, 0.15 / (k + 1)), rng.uniform(0, 2 * np.pi)) for k in range(4)])]
        for _ in range(per_class):
            texture = crop(28)
            if texture is None:
                break
            if c >= 6:  # full-frame texture crops (brick walls, grass, text...): only the texture differs
                items.add(texture)
                continue
            jitter = rng.normal(0, 0.01, shape.shape) * np.r_[1, np.tile([1, 0], 4)]
            mask = silhouette(shape, jitter)
            if detail(textured_object(np.ones((28, 28), np.float32), texture, 0), where=mask > 0.9) < 12:
                continue  # a nearly flat fill where it shows: the item would be its silhouette alone
            image = textured_object(mask, texture, background)
            item = items.add(image)
            if rng.random() < 0.2 and (texture := crop(28)) is not None:
                items.negatives.append((item, items.add(textured_object(mask, texture, background)), "same silhouette, other texture"))
            if rng.random() < 0.1:
                items.negatives.append((item, items.add(with_detail(image, mask, rng)), "one detail changed"))
    return items


def recolour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same picture in other colours: hue turned by 40-140 degrees, or two channels swapped."""
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int32) + int(rng.integers(20, 70))) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    order = [[1, 0, 2], [2, 1, 0], [0, 2, 1]][rng.integers(3)]
    return np.ascontiguousarray(image[:, :, order])


def photos(per_source: int, half: str, rng: np.random.Generator) -> Items:
    """48x48 colour crops of colour photos; 15% get a recoloured sibling (a distinct item)."""
    items = Items()
    for name in COLOUR_SOURCES:
        crop = Cropper(photo(name, half, gray=False), rng, (1.0, 5.0), min_detail=4.0)
        for _ in range(per_source):
            if (image := crop(48)) is None:
                break
            item = items.add(image)
            if rng.random() < 0.15:
                items.negatives.append((item, items.add(recolour(image, rng)), "recoloured"))
    return items


def scene(rng: np.random.Generator, side: int, shapes: list, background: np.ndarray | None = None) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    if background is None:
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)[:, :, None]
        image = (c0 * (1 - t) + c1 * t).astype(np.float32)
    else:
        image = background.astype(np.float32).copy()
    for kind, colour, centre, size in shapes:
        if kind == "circle":
            cv2.circle(image, centre, size[0], colour, -1)
        else:
            cv2.rectangle(image, centre, (centre[0] + size[0], centre[1] + size[1]), colour, -1)
    image += cv2.GaussianBlur(rng.normal(0, 12, image.shape).astype(np.float32), (0, 0), 1.5)
    return image.clip(0, 255).astype(np.uint8)


def random_shapes(rng: np.random.Generator, side: int, count: int, small: bool = False) -> list:
    shapes = []
    for _ in range(count):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        centre = tuple(int(v) for v in rng.integers(side // 8, side - side // 8, 2))
        high = side // 10 if small else side // 3
        size = tuple(int(v) for v in rng.integers(max(3, high // 3), high, 2))
        shapes.append(("circle" if rng.random() < 0.5 else "rect", colour, centre, size))
    return shapes


def scenes(n: int, rng: np.random.Generator, side: int = 128) -> Items:
    """Generated colour scenes. Hard negatives: a tenth get a sibling with the same layout in other
    colours; every 20 scenes, 5 items share one background and differ only by a small object."""
    items = Items()
    while len(items.images) < n:
        shapes = random_shapes(rng, side, int(rng.integers(3, 7)))
        state = rng.bit_generator.state
        item = items.add(scene(rng, side, shapes))
        if rng.random() < 0.1:
            rng.bit_generator.state = state  # same gradient and noise, shapes in other colours
            recoloured = [(k, tuple(float(v) for v in np.roll(colour, 1)[::-1]), c, s) for k, colour, c, s in shapes]
            items.negatives.append((item, items.add(scene(rng, side, recoloured)), "same shapes, other colours"))
        if len(items.images) % 20 == 0:
            backdrop = scene(rng, side, random_shapes(rng, side, 3))
            members = [items.add(scene(rng, side, random_shapes(rng, side, 1, small=True), backdrop)) for _ in range(5)]
            items.negatives += [(a, b, "shared background") for a, b in zip(members, members[1:])]
    return items


def dataset(name: str, half: str, seed: int, fraction: float) -> Items:
    rng = np.random.default_rng(seed)
    made = {
        "digits": lambda: digits(half),
        "lookalike": lambda: lookalike(180, half, rng),
        "photos": lambda: photos(200, half, rng),
        "scenes": lambda: scenes(1200, rng),
    }[name]()
    return inject(made, fraction, rng)

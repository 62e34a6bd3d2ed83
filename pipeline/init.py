"""`pipeline init DATA_ROOT`: a commented params.yaml for a competition folder, and what was detected.

The file is the package's defaults (pipeline/defaults/params.yaml, the repository's params.yaml) with
data.root set, comments kept; every other key stays on auto/detect, so the report says what those
detections find now (layout, task, id and label columns, classes, image sizes, metric).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from pipeline import metrics
from pipeline.artifacts import write_text
from pipeline.data import INDICATOR_LAYOUT, discover
from pipeline.errors import DataError, ParamsError
from pipeline.params import validate

SIZE_PROBES = 200  # image headers read for the size report


def defaults_text() -> str:
    """The commented default params.yaml the package ships."""
    return resources.files("pipeline").joinpath("defaults/params.yaml").read_text()


def with_root(text: str, root: str) -> str:
    """The defaults with data.root replaced in place (its comment and every other line kept)."""
    pattern = re.compile(r"^(  root: )(\S+)( *#.*)?$", re.MULTILINE)
    if len(pattern.findall(text)) != 1:
        raise ParamsError("the packaged params.yaml has no single `  root:` line under data; cannot set data.root")
    value = yaml.safe_dump(root, default_style=None).strip().removesuffix("...").strip()
    return pattern.sub(lambda m: f"{m.group(1)}{value}{m.group(3) or ''}", text, count=1)


def image_sides(paths: list[str]) -> dict:
    """Median and range of width x height over up to SIZE_PROBES train images (file headers only)."""
    from PIL import Image

    step = max(1, len(paths) // SIZE_PROBES)
    sizes = []
    for path in paths[::step][:SIZE_PROBES]:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except Exception:  # noqa: BLE001 - preprocess reports unreadable files
            continue
    if not sizes:
        return {"image sizes": "none readable"}
    w, h = np.array(sizes).T
    return {"image sizes (w x h)": f"median {int(np.median(w))} x {int(np.median(h))}, "
                                   f"from {w.min()} x {h.min()} to {w.max()} x {h.max()} ({len(sizes)} read)"}


def detect(root: Path, params) -> dict:
    """What discovery and the auto settings see in the folder, for the report."""
    d = params.data
    data = discover(root, d.id_column, d.label_column, d.task, d.tag_separator, d.class_order)
    train = data.manifest[data.manifest.split == "train"]
    top_k = params.predict.top_k or data.task.top_k
    metric, why = metrics.resolve(params.train.metric, data.task.kind, top_k)
    return {
        "layout": data.layout,
        "columns": ("one folder per class" if data.layout == "class-per-folder" else f"id: {data.id_column}, label: "
                    + ("one 0/1 column per class" if data.layout == INDICATOR_LAYOUT else data.label_column)),
        "task": f"{data.task.kind} ({data.task.why})" + (f", {top_k} answers per image" if top_k > 1 else ""),
        "classes": f"{len(data.classes)}: {', '.join(data.classes[:8])}{', ...' if len(data.classes) > 8 else ''}",
        "train images": len(train),
        "test images": int((data.manifest.split == "test").sum()),
        **image_sides(train.path.tolist()),
        "metric": f"{metric} ({why})",
    }


def init(data_root: Path, params_path: Path, force: bool) -> dict:
    """Write params_path for data_root; refuse to overwrite without force. Returns the report."""
    params_path = Path(params_path)
    if params_path.exists() and not force:
        raise ParamsError(f"{params_path} exists; pass --force to overwrite it (or --params OTHER.yaml)")
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{data_root}: competition folder not found")
    text = with_root(defaults_text(), str(root))
    params = validate(yaml.safe_load(text))
    try:
        report = detect(root, params)
    except DataError as exc:  # the file is still the place to fix it (data.id_column, data.label_column, ...)
        report = {"detection failed": f"{exc}; edit the data section of {params_path}, then `pipeline status`"}
    write_text(params_path, text)
    return {"params": str(params_path), "data.root": str(root), **report}

"""Predict throughput: images/s and image-views/s with TTA, against the model's own ceiling.

The ceiling is the model's forward pass on a batch already on the device (no cache read, no
normalisation, no views). Each TTA set is timed end to end through `predict_views` (memory-mapped
uint8 cache -> device -> views -> model), batched as predict does, and once with one view per forward
pass for comparison. Figures are ratios measured in the same run on the same machine.

    python bench/predict_speed.py                       # resnet26d, 224 px, GPU if there is one
    python bench/predict_speed.py --model resnet10t --size 64 --images 256   # a quick CPU run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's stages/, not an installed copy

import numpy as np
import timm
import torch

from pipeline.device import autocast_dtype  # noqa: E402
from stages.predict.ensemble import predict_views  # noqa: E402
from stages.predict.tta import expand  # noqa: E402

SETS = {"identity": ["identity"], "flips": ["identity", "hflip"], "all": ["identity", "hflip", "vflip", "shift", "scale", "crops"]}


def timed(fn, repeat: int) -> float:
    fn()  # warm-up (cudnn autotune, allocator)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet26d")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=512, help="images x views per forward pass")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    results = []

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    amp = autocast_dtype("auto", device)
    torch.backends.cudnn.benchmark = True
    model = timm.create_model(args.model, pretrained=False, num_classes=args.classes).to(device).eval()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test.npy"
        data = np.random.default_rng(0).integers(0, 255, (args.images, args.size, args.size, 3), dtype=np.uint8)
        np.save(path, data)
        array = np.load(path, mmap_mode="r")
        rows = np.arange(args.images)

        x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)

        @torch.no_grad()
        def ceiling():
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                model(x)

        ceiling_s = timed(ceiling, max(3, args.repeat)) / args.batch_size
        name = torch.cuda.get_device_name() if cuda else "CPU"
        print(f"{args.model} {args.size}px on {name}, {args.images} images, batch {args.batch_size} (images x views)")
        print(f"ceiling (forward only, data on device, amp={amp}): {1 / ceiling_s:,.0f} image-views/s")
        print(f"{'TTA set':<10} {'views':>5} {'images/s':>10} {'views/s':>10} {'of ceiling':>10} {'1 view/pass':>12} {'batched gain':>12}")
        for label, groups in SETS.items():
            views = expand(groups, 0.0625, 0.1, 0.875)
            batched = timed(lambda: predict_views(model, array, rows, norm, views, args.batch_size, device, amp=amp), args.repeat)
            looped = timed(lambda: [predict_views(model, array, rows, norm, [v], args.batch_size, device, amp=amp) for v in views], 1)
            ips = args.images / batched
            results.append({"model": args.model, "size": args.size, "set": label, "views": len(views), "images/s": ips,
                         "% of ceiling": 100 * ips * len(views) * ceiling_s, "device": name})
            print(f"{label:<10} {len(views):>5} {ips:>10,.0f} {ips * len(views):>10,.0f} {ips * len(views) * ceiling_s:>10.2f} "
                  f"{args.images / looped:>12,.0f} {looped / batched:>11.2f}x")
    if args.json:
        import json

        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

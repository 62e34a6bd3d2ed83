"""The GPU acceptance run's parts (bench/gpu_acceptance.sh calls this; read that file first).

  speed  bench/train_speed.py at 64 px (resnet26d) and 224 px (resnet50), bench/predict_speed.py
  tests  pytest -m gpu (bf16, fp16 + grad scaler, channels_last, torch.compile, auto batch, resume
         across AMP modes, the cache `fits`, syncs in the step under CUDA's sync debug mode)
  run    `pipeline run` with the shipped params.yaml on two generated competitions (60k 28 px gray,
         20k 224 px colour), each under a wall-time cap: per-stage wall time, epochs done, peak GPU
         memory, and the projected total when the cap stopped it

Every part appends rows to one table, printed at the end and written to --out (table.md, rows.json).
--smoke shrinks every size so the whole thing runs on a CPU in minutes (tests/test_gpu_acceptance.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASETS = {  # name: images, side, gray, wall cap (s)
    "gray28": dict(images=60000, side=28, gray=True, cap=270),
    "colour224": dict(images=20000, side=224, gray=False, cap=270),
}
SMOKE = {"gray28": dict(images=90, side=28, gray=True, cap=240), "colour224": dict(images=60, side=48, gray=False, cap=240)}
SMOKE_PARAMS = ["train.model=resnet10t", "train.epochs=2", "train.folds=2", "train.batch_size=16", "train.lr_base_batch=null",
                "train.workers=0", "train.warmup_epochs=1", "train.mix_off_epochs=0", "predict.tta=[identity]",
                "predict.batch_size=64", "preprocess.workers=1"]


def python() -> list[str]:
    return [sys.executable]


def part_speed(smoke: bool, out: Path) -> list[dict]:
    rows = []
    train_json, predict_json = out / "train_speed.json", out / "predict_speed.json"
    args = ["--smoke", "--images", "160"] if smoke else ["--preset", "64", "--preset", "224"]
    subprocess.run(python() + [str(ROOT / "bench/train_speed.py"), *args, "--json", str(train_json)], check=True)
    for r in json.loads(train_json.read_text()):
        rows.append({"part": "speed", "what": f"train {r['model']} {r['size']}px b{r['batch']} ({r['data path']})",
                     "images/s": r["loop img/s"], "% of ceiling": r["step % of ceiling"], "epoch s": r["epoch s"],
                     "epoch % of ceiling": r["epoch % of ceiling"], "peak GPU MiB": r["peak GPU MiB"], "device": r["device"]})
    predict = ["--model", "resnet10t", "--size", "32", "--images", "64", "--repeat", "1"] if smoke else ["--model", "resnet26d", "--size", "224"]
    subprocess.run(python() + [str(ROOT / "bench/predict_speed.py"), *predict, "--json", str(predict_json)], check=True)
    for r in json.loads(predict_json.read_text()):
        rows.append({"part": "speed", "what": f"predict {r['model']} {r['size']}px TTA {r['set']} ({r['views']} views)",
                     "images/s": r["images/s"], "% of ceiling": r["% of ceiling"], "device": r["device"]})
    return rows


def part_tests(smoke: bool, out: Path) -> list[dict]:
    t0 = time.perf_counter()
    done = subprocess.run(python() + ["-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests/test_gpu.py"), "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    (out / "pytest_gpu.txt").write_text(done.stdout + done.stderr)
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    print(done.stdout[-3000:])
    return [{"part": "tests", "what": "pytest -m gpu", "result": last, "wall s": time.perf_counter() - t0}]


def write_competition(root: Path, images: int, side: int, gray: bool, classes: int = 10) -> None:
    """Kaggle layout: train/, train.csv, test/ (a tenth as many), sample_submission.csv; blobs by class."""
    import cv2
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    for split, n in (("train", images), ("test", max(10, images // 10))):
        (root / split).mkdir(parents=True, exist_ok=True)
        labels = rng.integers(0, classes, n)
        for i, label in enumerate(labels):
            cy, cx = rng.uniform(0.3, 0.7, 2) * side
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (side / (4 + label % 4)) ** 2))
            colour = np.array([60 + 19 * label, 250 - 19 * label, 120 + 10 * (label % 3)])[: 1 if gray else 3]
            image = np.clip(15 + rng.normal(0, 6, (side, side, 1)) + blob[..., None] * colour, 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / split / f"{split}{i}.png"), image[..., 0] if gray else image)
        if split == "train":
            pd.DataFrame({"id": [f"train{i}" for i in range(n)], "label": [f"c{k}" for k in labels]}).to_csv(root / "train.csv", index=False)
        else:
            pd.DataFrame({"id": [f"test{i}" for i in range(n)], "label": "c0"}).to_csv(root / "sample_submission.csv", index=False)


def stage_times(workdir: Path) -> dict:
    times = {}
    for lock in sorted(workdir.glob("*/lock.json")):
        times[lock.parent.name] = json.loads(lock.read_text()).get("seconds")
    return times


def epochs_done(workdir: Path) -> int:
    import pandas as pd

    files = list((workdir / "train").glob("fold*/metrics.csv")) + list((workdir / "train" / ".partial").glob("fold*/metrics.csv"))
    return sum(len(pd.read_csv(f)) for f in files)


def part_run(smoke: bool, out: Path, data_dir: Path) -> list[dict]:
    from pipeline.params import load_params

    rows = []
    for name, spec in (SMOKE if smoke else DATASETS).items():
        root, workdir = data_dir / name, out / f"work_{name}"
        if not (root / "train.csv").is_file():
            t0 = time.perf_counter()
            write_competition(root, spec["images"], spec["side"], spec["gray"])
            print(f"{name}: generated {spec['images']} images in {time.perf_counter() - t0:.0f}s", flush=True)
        sets = [f"data.root={root}"] + (SMOKE_PARAMS if smoke else [])
        params, _ = load_params(ROOT / "params.yaml", sets)
        planned = params.train.epochs * (params.train.folds if params.train.fold is None else 1)
        command = [sys.executable, "-m", "pipeline", "run", "-p", str(ROOT / "params.yaml"), "-w", str(workdir)]
        for s in sets:
            command += ["-S", s]
        t0 = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
        code, peak = "capped", 0.0
        while time.perf_counter() - t0 < spec["cap"] and process.poll() is None:
            peak = max(peak, gpu_memory_used())
            time.sleep(1)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
        else:
            code = process.returncode
        wall = time.perf_counter() - t0
        times, done = stage_times(workdir), epochs_done(workdir)
        train_wall = wall - sum(v for k, v in times.items() if k != "train" and v)
        projected = wall if code == 0 else wall + (planned - done) * train_wall / max(done, 1) + 0.1 * wall  # + predict, roughly
        rows.append({"part": "run", "what": f"pipeline run {name} ({spec['images']} images, {spec['side']} px)", "exit": code,
                     "submission": (workdir / "predict" / "submission.csv").is_file(),
                     "wall s": wall, "epochs done": f"{done}/{planned}", "projected total s": projected, "peak GPU MiB": peak,
                     **{f"{k} s": v for k, v in times.items()}})
    return rows


def gpu_memory_used() -> float:
    """MiB in use on GPU 0 (nvidia-smi; the run is another process), 0 without a GPU."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                              capture_output=True, text=True, timeout=10)
        return float(done.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return 0.0


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no CUDA)"


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:,.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["speed", "tests", "run", "all"], default="all")
    ap.add_argument("--out", type=Path, default=Path("gpu_acceptance_out"))
    ap.add_argument("--data", type=Path, help="where the generated competitions go (default: OUT/data)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, runs on a CPU")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = ["speed", "tests", "run"] if args.part == "all" else [args.part]
    rows = []
    for part in parts:
        t0 = time.perf_counter()
        if part == "speed":
            rows += part_speed(args.smoke, args.out)
        elif part == "tests":
            rows += part_tests(args.smoke, args.out)
        else:
            rows += part_run(args.smoke, args.out, args.data or args.out / "data")
        print(f"part {part} done in {time.perf_counter() - t0:.0f}s", flush=True)
    text = f"device: {device_name()}\n\n{table(rows)}\n"
    print(text)
    (args.out / f"table_{args.part}.md").write_text(text)
    (args.out / f"rows_{args.part}.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()

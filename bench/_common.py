"""Shared set-up of the benchmarks: their own database, the seed scenario."""

import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FIFTYONE_DATABASE_NAME", "noise_audit_bench")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ.setdefault("NOISE_AUDIT_CACHE", str(ROOT / ".cache" / "noise_audit"))
SHARED = Path(os.environ.get("NOISE_AUDIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
TINY = SHARED / "tiny-imagenet-10"
SEED_CLASSES = ["dining_table", "gondola"]
RESULTS = ROOT / "bench" / "results"


def require_data():
    if not TINY.is_dir():
        sys.exit(f"benchmark data not found at {TINY} (../shared/data beside the repo)")


def machine():
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def write_json(name, payload):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {path.relative_to(ROOT)}")

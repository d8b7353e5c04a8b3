"""Wall time of the seed-scenario demo, cold (empty feature cache) and warm.

Runs the CLI exactly as the README does, twice, in one go: first with a fresh
feature cache, then again with the cache it left. Wall time includes Python
start-up, imports, the database and the dataset import.

    python bench/demo_timing.py
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from _common import TINY, machine, require_data, table, write_json


def run_demo(cache):
    env = dict(os.environ, NOISE_AUDIT_CACHE=cache)
    cmd = [sys.executable, "-m", "noise_audit.cli", "demo", "--data", str(TINY),
           "--classes", "dining_table", "gondola", "--name", "bench-demo-timing", "--json"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - t, json.loads(proc.stdout)


def main():
    require_data()
    with tempfile.TemporaryDirectory() as cache:
        cold, out_cold = run_demo(cache)
        warm, out_warm = run_demo(cache)
    rows = [["cold (no cached features)", f"{cold:.1f}", "180", "yes" if cold < 180 else "NO"],
            ["warm (features cached)", f"{warm:.1f}", "30", "yes" if warm < 30 else "NO"]]
    print(table(rows, ["seed-scenario demo", "wall s", "target s", "within"]))
    write_json("demo_timing", {"cold_s": cold, "warm_s": warm, "timings_cold": out_cold["timings_s"],
                               "timings_warm": out_warm["timings_s"], "machine": machine(),
                               "corruption_score": out_warm["corruption_score"]})


if __name__ == "__main__":
    main()

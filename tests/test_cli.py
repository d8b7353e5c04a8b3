"""The command line, run as a user would: a subprocess per command."""

import json
import os
import subprocess
import sys

import fiftyone as fo
import pytest

from conftest import FIXTURES, unique_name


def cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "noise_audit.cli", *args], capture_output=True, text=True, env=os.environ.copy(), timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("command", ["demo", "import", "inject", "audit", "report", "evaluate", "plugin"])
def test_every_subcommand_has_help(command):
    out = cli(command, "--help").stdout
    assert "--json" in out and "usage: noise-audit" in out


def test_import_inject_audit_evaluate(tmp_path):
    name = unique_name()
    try:
        out = json.loads(cli("import", str(FIXTURES), "--name", name, "--classes", "frog", "truck", "--json").stdout)
        assert out["n_samples"] == 140 and out["tags"] == {"train": 100, "val": 40}
        ds = fo.load_dataset(name)
        inj = json.loads(cli("inject", "--dataset", name, "--tags", "train", "--fraction", "0.2", "--json").stdout)
        assert inj["num_flipped"] == 20
        res = json.loads(cli("audit", "--dataset", name, "--label-field", "ground_truth_noisy",
                             "--image-size", "64", "--json").stdout)
        assert res["n_samples"] == 140 and res["influence_method"] == "linear"
        # the same audit on a local Dask cluster of two workers writes the same scores
        ds.reload()
        local = ds.values("noise_audit_corruption_score")
        dask = json.loads(cli("audit", "--dataset", name, "--label-field", "ground_truth_noisy", "--key", "on_dask",
                              "--image-size", "64", "--dask", "local:2", "--json").stdout)
        assert dask["n_samples"] == 140
        ds.reload()
        remote = ds.values("on_dask_corruption_score")
        assert max(abs(a - b) for a, b in zip(remote, local)) < 1e-6 * max(local)
        assert ds.get_run_info("on_dask").config.dask_workers == 2
        ev = json.loads(cli("evaluate", "--dataset", name, "--json").stdout)
        assert ev["corruption_score"]["auroc"] > 0.8
        assert {r["label"] for r in ev["corruption_score"]["per_label"]} == {"frog", "truck"}
        human = cli("evaluate", "--dataset", name).stdout
        assert "corruption_score" in human and "mean corruption score by given label" in human
        again = cli("audit", "--dataset", name, "--label-field", "ground_truth_noisy", check=False)
        assert again.returncode == 2 and "error:" in again.stderr and "overwrite" in again.stderr
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_bad_input_exits_2_with_one_message():
    proc = cli("audit", "--dataset", unique_name("missing"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Dataset")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag, message", [(["--dask", "local:0"], "positive number of workers"),
                                           (["--device", "tpu"], "device must be")])
def test_bad_dask_or_device_exits_2_before_writing(make_small_dataset, flag, message):
    ds = make_small_dataset(n_train=5, n_val=2)
    before = sorted(ds.get_field_schema())
    proc = cli("audit", "--dataset", ds.name, *flag, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    ds.reload()
    assert sorted(ds.get_field_schema()) == before and ds.list_runs() == []

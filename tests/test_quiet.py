"""Quiet output (issue 13 item 6): the WHOLE stderr of each CLI command holds
only our progress bars (tqdm) and our own lines (``error: ...``,
``warning: ...``), nothing from dependencies: no FutureWarning/UserWarning, no
MongoDB version notice, no torch.hub "Downloading:" line, no print of a model
package. Each command runs as a user runs it, in a subprocess of its own.
"""

import json
import os
import re
import subprocess
import sys

import pytest

# A tqdm bar as it is redrawn: "desc:  85%|████▌ | 64/75 [00:02<00:00, 25.77img/s, postfix]"
BAR = re.compile(r"[^\r\n]*: *\d+%\|[^|\r\n]*\| *[\d.]+[kMGT]?/[\d.]+[kMGT]? \[[^\]\r\n]*\]")
OURS = ("error: ", "warning: ")


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "noise_audit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


def messages(stderr):
    """stderr without its progress bars: the lines that are not a redrawn tqdm bar.

    Raises if any of them is not one of ours, showing the whole stderr."""
    lines = [piece.strip() for piece in re.split(r"[\r\n]+", stderr)]
    lines = [line for line in lines if line and not BAR.fullmatch(line)]
    foreign = [line for line in lines if not line.startswith(OURS)]
    assert not foreign, f"not ours on stderr: {foreign}\n--- whole stderr ---\n{stderr}"
    return lines


def test_the_bar_pattern_matches_bars_and_nothing_else():
    assert BAR.fullmatch("features (efficientnet_lite0):  85%|████▌ | 64/75 [00:02<00:00, 25.77img/s]")
    assert BAR.fullmatch("report:   0%|          | 0/6 [00:00<?, ?stage/s, read]")
    assert not BAR.fullmatch("/x/pydvl/utils/progress.py:31: FutureWarning: `template_mgs` is deprecated")
    assert not BAR.fullmatch('Downloading: "https://download.pytorch.org/models/resnet18-f37072fd.pth" to /x')
    with pytest.raises(AssertionError, match="not ours"):
        messages("You are running the oldest supported major version of MongoDB.\n")


def test_every_command_writes_only_bars_and_our_messages_to_stderr(make_small_dataset, tmp_path):
    name = make_small_dataset(n_train=10, n_val=4).name

    inject = cli("inject", "--dataset", name, "--tags", "train", "--fraction", "0.2")
    assert inject.returncode == 0 and messages(inject.stderr) == []

    audit = cli("audit", "--dataset", name, "--label-field", "ground_truth_noisy", "--image-size", "32", "--json")
    assert audit.returncode == 0, audit.stderr
    assert messages(audit.stderr) == [] and json.loads(audit.stdout)["n_samples"] == 42

    report = cli("report", "--dataset", name, "--out", str(tmp_path / "report"), "--truth-field", "label_flipped",
                 "--explain", "1")
    assert report.returncode == 0 and messages(report.stderr) == []

    evaluate = cli("evaluate", "--dataset", name)
    assert evaluate.returncode == 0 and messages(evaluate.stderr) == [] and "corruption_score" in evaluate.stdout

    # bad input (one case here; tests/test_bad_input.py has them all): exactly one line, ours.
    # ResNet18's ImageNet weights out of reach (an empty torch cache, a proxy nobody listens on): torch.hub's
    # "Downloading:" line must not come first; the error is one line naming --weights PATH
    dead = "http://127.0.0.1:9"
    offline = {"TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead,
               "http_proxy": dead, "NO_PROXY": "", "no_proxy": ""}
    r18 = cli("audit", "--dataset", name, "--key", "r18", "--backbone", "resnet18", "--image-size", "32", env=offline)
    assert r18.returncode == 2 and r18.stdout == ""
    (line,) = messages(r18.stderr)
    assert line.startswith("error: ResNet18's ImageNet weights could not be loaded") and "--weights PATH" in line

    # a file where the feature cache should be: one warning line, and the audit is written
    blocker = tmp_path / "cache_is_a_file"
    blocker.write_text("not a folder")
    nocache = cli("audit", "--dataset", name, "--key", "nocache", "--image-size", "32",
                  env={"NOISE_AUDIT_CACHE": str(blocker)})
    assert nocache.returncode == 0, nocache.stderr
    (line,) = messages(nocache.stderr)
    assert line.startswith("warning: feature cache ") and "cannot be used" in line and "without it" in line
    assert "audited 42 samples" in nocache.stdout

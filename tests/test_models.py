"""Models: shapes, penultimate features, normalisation inside the model, architecture facts from the paper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workloads import catalog
from workloads.assets.models import MODEL_NAMES, Normalize, RobustModel, build_model

MEAN3, STD3 = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)

# name -> (input side, feature_dim); ResNets run at batch 1 (CPU cost; BN is in eval mode).
CASES = {
    "small_cnn": (28, 128),
    "resnet18_cifar": (32, 512),
    "resnet50_cifar": (32, 2048),
    "resnet50": (224, 2048),
}


def test_model_names_match_spec() -> None:
    assert set(MODEL_NAMES) == set(catalog.MODELS) == set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_shapes_features_and_head(name: str) -> None:
    torch.manual_seed(0)
    side, dim = CASES[name]
    model = build_model(name, num_classes=7, in_channels=3, mean=MEAN3, std=STD3).eval()
    assert isinstance(model, RobustModel)
    x = torch.rand(2 if name == "small_cnn" else 1, 3, side, side)
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
        z = (x - torch.tensor(MEAN3).view(1, 3, 1, 1)) / torch.tensor(STD3).view(1, 3, 1, 1)
        inner = model.head(model.body(z))
    assert logits.shape == (len(x), 7)
    assert feats.shape == (len(x), dim) and model.feature_dim == dim
    # the penultimate representation is exactly what the final linear layer reads
    torch.testing.assert_close(model.head(feats), logits)
    # normalisation lives inside the model: logits = net((x - mean) / std)
    torch.testing.assert_close(inner, logits, rtol=1e-4, atol=1e-5)


def test_normalisation_changes_the_output() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 3, MEAN3, STD3)
    x = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(model.head(model.body(x)), model(x), atol=1e-3)


def test_small_cnn_is_batchnorm_free_and_size_agnostic() -> None:
    # DDP-equivalence tests need a model without batch statistics
    model = build_model("small_cnn", 10, 1, (0.286,), (0.353,))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert model(torch.rand(3, 1, 32, 32)).shape == (3, 10)


def test_cifar_resnet50_matches_the_paper() -> None:
    model = build_model("resnet50_cifar", 10, 3, MEAN3, STD3)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    n_params = sum(p.numel() for p in model.parameters())
    assert 23.0e6 < n_params < 24.0e6  # paper: "roughly 23 million parameters"
    blocks = [m for m in model.modules() if type(m).__name__ == "Bottleneck"]
    assert len(blocks) == 3 + 4 + 6 + 3


def test_one_channel_input_and_checkpointed_normalisation() -> None:
    model = build_model("resnet18_cifar", 10, 1, (0.5,), (0.25,)).eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    state = model.state_dict()
    assert state["normalize.mean"].flatten().tolist() == [0.5]
    assert state["normalize.std"].flatten().tolist() == [0.25]


def test_normalize_module() -> None:
    norm = Normalize((0.5, 0.0), (0.5, 2.0))
    x = torch.ones(1, 2, 1, 1)
    assert norm(x).flatten().tolist() == [1.0, 0.5]
    with pytest.raises(ValueError):
        Normalize((0.5,), (0.0,))


def test_unknown_model_and_bad_mean_are_errors() -> None:
    with pytest.raises(ValueError, match="valid models: small_cnn, resnet18_cifar, resnet50_cifar, resnet50"):
        build_model("vgg16", 10, 3, MEAN3, STD3)
    with pytest.raises(ValueError, match="in_channels"):
        build_model("small_cnn", 10, 1, MEAN3, STD3)

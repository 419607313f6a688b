"""The descriptor registry: offline default, hf-hub names (from a local cache), checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants

from wildreid.images import load_image
from wildreid.models import (
    ModelError,
    available,
    create_descriptor,
    efficientnet_lite_weights,
    rename_to_timm,
    save_descriptor,
)

from .conftest import BENCH


def _embed(descriptor, path) -> np.ndarray:
    with torch.inference_mode():
        batch = descriptor.transform()(load_image(path))[None]
        return torch.nn.functional.normalize(descriptor.model(batch), dim=1)[0].numpy()


@pytest.fixture(scope="module")
def lite0():
    return create_descriptor("efficientnet-lite0")


def _first(species: str):
    return sorted((BENCH / "images" / species).iterdir())[0]


def test_default_weights_are_real_imagenet_weights():
    """Renamed into timm with its classifier, the packaged weights call a nyala an impala."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(efficientnet_lite_weights(0), map_location="cpu", weights_only=True)
    model.load_state_dict(rename_to_timm(source, model, "lite0"))
    model.eval()
    descriptor = create_descriptor("efficientnet-lite0")
    batch = descriptor.transform()(load_image(_first("nyala")))[None]
    with torch.inference_mode():
        top = model(batch).argmax().item()
    assert top in {350, 351, 352, 353}  # ibex, hartebeest, impala, gazelle


def test_default_descriptor(lite0):
    assert lite0.input_size == (224, 224) and lite0.mean == (0.5, 0.5, 0.5)
    assert "efficientnet-lite0" in available()
    feature = _embed(lite0, _first("nyala"))
    assert feature.shape == (1280,) and np.isclose(np.linalg.norm(feature), 1, atol=1e-5)


def test_checkpoint_round_trip(lite0, tmp_path):
    path = save_descriptor(lite0, tmp_path / "model.pt")
    loaded = create_descriptor(str(path))
    assert loaded.preprocessing == lite0.preprocessing
    assert loaded.cache_key != lite0.cache_key  # other weights, other cache entries
    np.testing.assert_allclose(_embed(loaded, _first("lion")), _embed(lite0, _first("lion")),
                               atol=1e-5)


def test_hf_hub_name_loads_from_local_cache(tmp_path, monkeypatch):
    """The path online users take (hf-hub:ORG/NAME via timm), served from a local HF cache."""
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    snapshot = tmp_path / "models--wildreid-test--tiny-vit" / "snapshots" / ("0" * 40)
    timm.models.save_for_hf(model, snapshot, model_config={"num_classes": 0})
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    descriptor = create_descriptor("hf-hub:wildreid-test/tiny-vit")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(descriptor.model.state_dict()[name], tensor)
    assert _embed(descriptor, _first("nyala")).shape == (model.num_features,)


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown model 'no-such-net'"):
        create_descriptor("no-such-net")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        create_descriptor(str(tmp_path / "absent.pt"))


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ModelError, match="not a wildreid descriptor checkpoint"):
        create_descriptor(str(path))

"""The descriptor registry: offline default, hf-hub names (from a local cache), checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants

from wildreid.images import load_image
from wildreid.models import (
    Descriptor,
    ModelError,
    available,
    create_descriptor,
    efficientnet_lite_weights,
    parse_ensemble,
    rename_to_timm,
    save_descriptor,
)

from .conftest import BENCH

#: Every test here reads real photos of the shared benchmark.
pytestmark = pytest.mark.bench


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


def test_ensemble_names_and_weights():
    assert parse_ensemble("efficientnet-lite0") == [("efficientnet-lite0", 1.0)]
    assert parse_ensemble("a+b") == [("a", 0.5), ("b", 0.5)]
    assert parse_ensemble("a:3+b:1") == [("a", 0.75), ("b", 0.25)]
    assert parse_ensemble("hf-hub:org/x+local-dir:/m") == [("hf-hub:org/x", 0.5),
                                                           ("local-dir:/m", 0.5)]
    for bad, message in (("a:1+b", "every model"), ("a:-1+b:2", "positive"), ("a++b", "empty")):
        with pytest.raises(ModelError, match=message):
            parse_ensemble(bad)


def test_an_ensemble_scores_the_weighted_mean_of_its_models(lite0, tmp_path, real_subset):
    """lite0 + a second, different network (random tiny ViT saved as a checkpoint): the
    ensemble's cosine is 0.7 x lite0's + 0.3 x the other's, each model cached apart."""
    from wildreid.data import load_dataset
    from wildreid.pipeline import Identifier

    tiny = timm.create_model("test_vit", pretrained=False, num_classes=0)
    other = save_descriptor(Descriptor("tiny", tiny, "test_vit", input_size=(160, 160),
                                       weights_id="random-test"), tmp_path / "tiny.pt")
    images = load_dataset(real_subset).metadata.head(8)
    alone = {name: Identifier(name, cache_dir=tmp_path / "cache", progress=False,
                              device="cpu").describe(images)
             for name in ("efficientnet-lite0", str(other))}
    both = Identifier(f"efficientnet-lite0:0.7+{other}:0.3", cache_dir=tmp_path / "cache",
                      progress=False, device="cpu").describe(images)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1, atol=1e-5)
    expected = (0.7 * alone["efficientnet-lite0"] @ alone["efficientnet-lite0"].T
                + 0.3 * alone[str(other)] @ alone[str(other)].T)
    np.testing.assert_allclose(both @ both.T, expected, atol=1e-5)
    assert len(list((tmp_path / "cache").glob("*/arrays.sqlite"))) == 2  # one cache per model
    with pytest.raises(ValueError, match="one model, not to an ensemble"):
        Identifier(f"efficientnet-lite0+{other}", weights=str(other)).describe(images)


@pytest.mark.slow
def test_the_identifier_is_a_scikit_learn_estimator(real_subset, tmp_path):
    """get_params/set_params/clone as scikit-learn's contract says; parameters stored as given
    and checked in fit; a changed parameter is honoured by the next fit (no stale network)."""
    from sklearn.base import clone

    from wildreid.data import load_dataset
    from wildreid.pipeline import Identifier
    from wildreid.rerank import LocalReranking

    identifier = Identifier("efficientnet-lite0", reranking=LocalReranking(["sift"]),
                            isolation={"lion": "crop"}, cache_dir=tmp_path / "cache",
                            progress=False, device="cpu")
    assert identifier.get_params()["reranking__features"] == ["sift"]  # as given, nested
    identifier.set_params(reranking__shortlist=20)  # reached as in a scikit-learn pipeline
    assert identifier.reranking.shortlist == 20
    twin = clone(identifier)
    assert twin.get_params()["reranking__shortlist"] == 20 and twin is not identifier
    assert twin.reranking is not identifier.reranking
    assert "Identifier(" in repr(identifier)
    Identifier(isolation="blurred")  # constructing never fails: fit checks
    with pytest.raises(ValueError, match="unknown isolation"):
        Identifier(isolation="blurred").fit(load_dataset(real_subset).database)

    tiny = timm.create_model("test_vit", pretrained=False, num_classes=0)
    other = str(save_descriptor(Descriptor("tiny", tiny, "test_vit", input_size=(160, 160),
                                           weights_id="random-test"), tmp_path / "tiny.pt"))
    database = load_dataset(real_subset).database
    model = Identifier("efficientnet-lite0", cache_dir=tmp_path / "cache", progress=False,
                       device="cpu").fit(database)
    assert model.database_[0].shape[1] == 1280  # EfficientNet-Lite0
    model.set_params(model=other).fit(database)
    narrow = Identifier(other, cache_dir=tmp_path / "cache", progress=False,
                        device="cpu").describe(database)
    np.testing.assert_allclose(model.database_[0], narrow, atol=1e-6)  # the new network's


def test_every_plug_in_kind_has_one_registry_shape():
    from wildreid.local import LOCAL_FEATURES
    from wildreid.matching import MATCHERS
    from wildreid.models import DESCRIPTORS
    from wildreid.registry import Registry
    from wildreid.train import LOSSES

    for registry in (DESCRIPTORS, LOCAL_FEATURES, MATCHERS, LOSSES):
        assert isinstance(registry, Registry) and len(registry) >= 3
        assert all(registry.summaries().values())  # each with its one-line summary
    assert set(LOCAL_FEATURES) == set(MATCHERS)  # every local feature has its matcher
    with pytest.raises(ValueError, match="unknown local features 'superpoint'; use one of aliked"):
        LOCAL_FEATURES.create("superpoint")
    with pytest.raises(ValueError, match="registered twice"):
        LOSSES.register("arcface")(lambda classes, dim: None)

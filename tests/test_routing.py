"""The species router (queries without species get one from the database) and per-species models,
on real photos."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
from typer.testing import CliRunner

from wildreid.cli import app
from wildreid.data import load_dataset
from wildreid.models import Descriptor, parse_models, save_descriptor
from wildreid.pipeline import Identifier

runner = CliRunner()


def _without_query_species(real_subset, folder):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str, keep_default_na=False)
    metadata.loc[metadata["split"] == "query", "species"] = ""
    folder.mkdir(parents=True, exist_ok=True)
    metadata.to_csv(folder / "metadata.csv", index=False)
    return folder


@pytest.mark.slow
def test_queries_without_species_are_routed_and_answered_as_with_species(real_subset, tmp_path):
    blank = _without_query_species(real_subset, tmp_path / "blank")
    runs = {}
    for name, data in (("given", real_subset), ("routed", blank)):
        output = tmp_path / name / "submission.csv"
        result = runner.invoke(app, ["identify", str(data), "--output", str(output),
                                     "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        runs[name] = (pd.read_csv(output, dtype=str),
                      pd.read_csv(output.with_name("submission.candidates.csv"), dtype=str))
    truth = pd.read_csv(real_subset / "metadata.csv", dtype=str).set_index("image_id")["species"]
    candidates = runs["routed"][1]
    best = candidates[candidates["rank"] == "1"].set_index("image_id")
    assert (best["species_source"] == "predicted").all()
    assert (best["species"] == truth[best.index]).all()  # nyala and lion told apart
    confidence = best["species_confidence"].astype(float)
    assert ((confidence > 0.5) & (confidence <= 1)).all()
    assert (runs["given"][1]["species_source"] == "given").all()
    # Routed right, everything downstream is the same: galleries, thresholds, answers.
    assert runs["routed"][0].equals(runs["given"][0])

    scored = runner.invoke(app, ["evaluate", str(tmp_path / "routed" / "submission.csv"),
                                 str(real_subset / "solution.csv"), "--metadata",
                                 str(real_subset / "metadata.csv"), "--json"])
    assert scored.exit_code == 0, scored.output
    router = json.loads(scored.output)["species_router"]
    assert router["routed_queries"] == router["checked"] == len(best)
    assert router["accuracy"] == 1 and router["wrong"] == []
    # Without the species in the metadata either, the known queries' true individuals say it.
    alone = runner.invoke(app, ["evaluate", str(tmp_path / "routed" / "submission.csv"),
                                str(real_subset / "solution.csv"), "--json"])
    router = json.loads(alone.output)["species_router"]
    assert 0 < router["checked"] < router["routed_queries"] and router["accuracy"] == 1


def test_a_wrong_route_is_reported(real_subset, tmp_path):
    blank = _without_query_species(real_subset, tmp_path / "blank")
    output = tmp_path / "run" / "submission.csv"
    assert runner.invoke(app, ["identify", str(blank), "--output", str(output), "--cache-dir",
                               str(tmp_path / "cache"), "--device", "cpu"]).exit_code == 0
    candidates = output.with_name("submission.candidates.csv")
    table = pd.read_csv(candidates, dtype=str)
    first = table["image_id"].iloc[0]
    said = table.loc[table["image_id"] == first, "species"].iloc[0]
    table.loc[table["image_id"] == first, "species"] = "lion" if said == "nyala" else "nyala"
    table.to_csv(candidates, index=False)
    scored = runner.invoke(app, ["evaluate", str(output), str(real_subset / "solution.csv"),
                                 "--metadata", str(real_subset / "metadata.csv")])
    assert scored.exit_code == 0, scored.output
    assert "species router" in scored.output and f"{first} (" in scored.output


@pytest.mark.slow
def test_models_by_species(real_subset, tmp_path):
    """nyala described by EfficientNet-Lite0, lion by another, narrower network (a random tiny
    ViT checkpoint): each species' rows are exactly its model's embeddings (zero-padded), the
    router uses the default model, and identify runs with it."""
    tiny = timm.create_model("test_vit", pretrained=False, num_classes=0)
    other = str(save_descriptor(Descriptor("tiny", tiny, "test_vit", input_size=(160, 160),
                                           weights_id="random-test"), tmp_path / "tiny.pt"))
    assert parse_models(f"nyala=efficientnet-lite0,lion={other}") == {
        "nyala": "efficientnet-lite0", "lion": other}
    assert parse_models("efficientnet-lite0") == "efficientnet-lite0"
    images = load_dataset(real_subset).metadata
    options = {"cache_dir": tmp_path / "cache", "progress": False, "device": "cpu"}
    both = Identifier({"nyala": "efficientnet-lite0", "lion": other}, **options).describe(images)
    lite0 = Identifier("efficientnet-lite0", **options).describe(images)
    narrow = Identifier(other, **options).describe(images)
    lion = (images["species"] == "lion").to_numpy()
    assert narrow.shape[1] < lite0.shape[1] == both.shape[1]
    np.testing.assert_allclose(both[~lion], lite0[~lion], atol=1e-6)
    np.testing.assert_allclose(both[lion, :narrow.shape[1]], narrow[lion], atol=1e-6)
    assert not both[lion, narrow.shape[1]:].any()

    blank = _without_query_species(real_subset, tmp_path / "blank")
    output = tmp_path / "run" / "submission.csv"
    result = runner.invoke(app, ["identify", str(blank), "--model",
                                 f"nyala=efficientnet-lite0,lion={other}", "--output",
                                 str(output), "--cache-dir", str(tmp_path / "cache"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    best = pd.read_csv(output.with_name("submission.candidates.csv"), dtype=str).query(
        "rank == '1'").set_index("image_id")
    truth = images.set_index("image_id")["species"]
    assert (best["species"] == truth[best.index]).all()  # routed by the default model
    bad = runner.invoke(app, ["identify", str(blank), "--model", "nyala=,lion=x"])
    assert bad.exit_code == 2 and "no model for species 'nyala'" in bad.output

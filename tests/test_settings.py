"""The settings file of ``identify --settings FILE``: read, checked, and printed to start from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wildreid.cli import app
from wildreid.settings import (
    SETTINGS,
    defaults,
    read_settings,
    reranking_settings,
    settings_template,
)


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my settings.toml"
    path.write_text(text)
    return path


def test_a_settings_file_overrides_the_defaults_and_paths_are_read_from_its_folder(tmp_path):
    path = _file(tmp_path, 'top-k = 3\ncache = false\nweights = "w/model.pth"\n'
                           '[reranking]\nmirror = "opposite"\n'
                           'keypoints-on = "nyala=animal,lion=image"\n'
                           "long_side = 256\n")  # the Python name is read too
    chosen = read_settings(path)
    assert chosen == {**defaults(), "top_k": 3, "cache": False,
                      "weights": tmp_path / "w" / "model.pth",
                      # the re-ranking's parameters, as parsed
                      "reranking": {"mirror": "opposite", "long_side": 256,
                                    "keypoints_on": {"nyala": "animal", "lion": "image"}}}


def test_the_reranking_table_is_read_from_the_reranking_itself():
    """Every parameter of ``LocalReranking`` but its matchers, shortlist and how the run runs is
    a setting of the ``[reranking]`` table, with its default and its meaning from the class:
    a new parameter there is a setting with no line to add."""
    import inspect

    from wildreid.rerank import LocalReranking

    parameters = inspect.signature(LocalReranking).parameters
    found = {setting.key: setting for setting in reranking_settings()}
    assert set(found) == set(parameters) - {"features", "shortlist", "device", "batch_size",
                                             "cache_dir", "workers", "progress", "seed", "ray",
                                             "keep_pair_scores", "first_stage"}
    for key, setting in found.items():
        assert setting.default == parameters[key].default
        assert len(setting.help) > 20 and "``" not in setting.help, (key, setting.help)
    assert found["long_side"].minimum == 32 and found["cascade"].kind is int


def test_the_template_holds_every_setting_at_its_default(tmp_path):
    """``wildreid settings`` prints every setting, commented out at its default: uncommented,
    the file reads back as the defaults (settings whose default the run chooses excepted)."""
    template = settings_template()
    every = (*SETTINGS, *reranking_settings())
    for setting in every:
        assert f"# {setting.name} = " in template
    names = {f"# {setting.name} = " for setting in every}
    uncommented = "\n".join(line if line == "[reranking]" else line[2:]
                            for line in template.splitlines()
                            if line == "[reranking]" or (any(line.startswith(name)
                                                             for name in names)
                                                         and "..." not in line))
    read = read_settings(_file(tmp_path, uncommented))
    assert read["reranking"] == {setting.key: setting.default for setting in reranking_settings()
                                 if setting.default is not None}
    assert {**read, "reranking": {}} == defaults()
    shown = CliRunner().invoke(app, ["settings"])
    assert shown.exit_code == 0 and shown.stdout.strip() == template.strip()


@pytest.mark.hostile
@pytest.mark.parametrize(("text", "message"), [
    ("top-k = [3", "not a TOML file"),
    ("shortlst = 3", "unknown setting 'shortlst'; the settings are top-k, "),
    ('top-k = "3"', "top-k = '3': give a whole number"),
    ("[reranking]\nmax-keypoints = true", "reranking.max-keypoints = True: give a whole number"),
    ("cache = 0", "cache = 0: give true or false"),
    ("[reranking]\nlong-side = 8", "reranking.long-side = 8: give 32 or more"),
    ('[reranking]\nmirror = "sideways"',
     "reranking.mirror = 'sideways': mirror must be one of none, opposite, all"),
    ('[reranking]\nkeypoints-on = "lion=fur"', "unknown keypoints-on 'fur'"),
    ('[reranking]\npair-score = "auto"', "unknown pair-score 'auto'; use confidence_sum, "),
    ("[reranking]\nshortlist = 3", "unknown setting 'shortlist' in [reranking]"),
    ('mirror = "opposite"', "unknown setting 'mirror'; the settings are top-k, "),
    ('isolation = "[red]x"', "unknown isolation '[red]x'"),
    ("weights = 3", "weights = 3: give a path in quotes"),
])
def test_a_wrong_setting_is_one_clear_error_naming_the_file_and_the_setting(tmp_path, text,
                                                                              message):
    path = _file(tmp_path, text + "\n")
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        read_settings(path)
    assert str(raised.value).startswith(f"{path}: ")
    result = CliRunner().invoke(app, ["identify", str(tmp_path), "--settings", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in " ".join(result.output.split()), result.output  # as text, not markup


@pytest.mark.hostile
def test_a_settings_file_that_cannot_be_read_is_one_clear_error(tmp_path):
    for path in (tmp_path / "missing.toml", tmp_path):
        result = CliRunner().invoke(app, ["identify", str(tmp_path), "--settings", str(path)])
        assert result.exit_code == 2 and "cannot read the settings file" in result.output
    (tmp_path / "latin.toml").write_bytes(b"mirror = \"\xe9\"\n")
    result = CliRunner().invoke(app, ["identify", str(tmp_path), "--settings",
                                      str(tmp_path / "latin.toml")])
    assert result.exit_code == 2 and "cannot read the settings file" in result.output


def test_identify_shows_at_most_15_options():
    """The command line keeps what changes from run to run; the rest is in the settings file."""
    options = [parameter for parameter in
               __import__("typer.main", fromlist=["get_command"]).get_command(app).commands[
                   "identify"].params if parameter.param_type_name == "option"]
    assert len(options) <= 15, [option.name for option in options]

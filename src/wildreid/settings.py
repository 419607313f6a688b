"""The settings of ``wildreid identify`` beyond its command line, read from a TOML file
(``identify --settings FILE``).

The command line keeps what a user changes from run to run (data, preset, outputs, device,
threshold, matchers); what is tuned once for a study or a machine lives here, each setting with
its name, type, default and meaning in one place. ``wildreid settings`` prints them all as a file
to start from.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Setting:
    """One setting: its ``name`` in the file (the option it was, kebab-case), the Python type of
    its value, what it means, and the checks a value must pass (``minimum`` for numbers,
    ``check`` a function raising ``ValueError`` where the value is wrong). Its default is the
    run's own (:func:`~wildreid.run.identify_dataset`'s parameter of the same name), read from
    there: one place."""

    name: str
    kind: type
    help: str
    minimum: int | None = None
    check: Callable[[object], object] | None = None

    @property
    def key(self) -> str:
        """The name as a Python parameter (``top-k`` -> ``top_k``)."""
        return self.name.replace("-", "_")

    @property
    def default(self) -> object:
        """The run's default (``None``: chosen by the run); ``cache``: on."""
        return True if self.key == "cache" else _run_defaults()[self.key]


@functools.cache
def _run_defaults() -> dict[str, object]:
    from wildreid.run import identify_dataset

    return {name: parameter.default
            for name, parameter in inspect.signature(identify_dataset).parameters.items()}


def _one_of(choices: tuple[str, ...]) -> Callable[[object], object]:
    def check(value: object) -> object:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return check


def _isolation(value: object) -> object:
    from wildreid.isolation import parse_isolation

    return parse_isolation(str(value))


def _keypoint_places(value: object) -> object:
    from wildreid.per_species import parse_by_species
    from wildreid.rerank import KEYPOINT_PLACES

    return parse_by_species(str(value), KEYPOINT_PLACES, "keypoints-on", "nyala=animal,lion=image")


#: Every setting a settings file may hold, in the order ``wildreid settings`` prints them.
SETTINGS: tuple[Setting, ...] = (
    Setting("top-k", int, "Candidates kept per query (the candidates CSV).", minimum=1),
    Setting("aggregation", str, "Identity score from its images' cosines: max | mean.",
            check=_one_of(("max", "mean"))),
    Setting("batch-size", int, "Images per forward pass of the global descriptor.",
            minimum=1),
    Setting("cache", bool, "Read and write the feature cache (false: neither)."),
    Setting("weights", Path, "Bare state_dict file to load into the timm architecture "
            "named by --model."),
    Setting("isolation", str, "What the global descriptor sees: none | crop (the "
            "animal's box) | mask (box, background filled), or per species as "
            "'nyala=crop,lion=none'. Regions: metadata bbox/mask columns, else U²-Net-p.",
            check=_isolation),
    Setting("segmenter-weights", Path, "A local u2netp.onnx [default: fetched once]."),
    Setting("mirror", str, "Also match queries flipped left-right: none | opposite "
            "(against the mirror orientation: left vs right) | all.",
            check=_one_of(("none", "opposite", "all"))),
    Setting("max-keypoints", int, "Local keypoints kept per image [default: the "
            "preset's, 512].", minimum=1),
    Setting("long-side", int, "Long side, in pixels, of the animal's box (or photo) that "
            "keypoints are detected on.", minimum=32),
    Setting("keypoints-on", str, "Where local keypoints are kept: animal (its mask) | "
            "image (the whole photo), or per species as 'nyala=animal,lion=image' [default: "
            "the accurate preset chooses per species; named matchers: animal, "
            "docs/decisions/0005].",
            check=_keypoint_places),
    Setting("cascade", int, "With two or more --local matchers, the first scores every "
            "shortlisted photo and the later ones only each query's best CASCADE by it (e.g. "
            "--local aliked-nn,aliked with cascade = 10: LightGlue where the fast matcher "
            "points).", minimum=1),
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def defaults() -> dict[str, object]:
    """Every setting's default, by Python name."""
    return {setting.key: setting.default for setting in SETTINGS}


def read_settings(path: str | Path) -> dict[str, object]:
    """The settings in the TOML file ``path``, by Python name, over the defaults. A path in the
    file is read from the file's folder. Anything wrong (not TOML, an unknown name, a value of
    the wrong type or out of range) is a ``ValueError`` naming the file and the setting."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the settings file ({error})") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not a TOML file ({error}); 'wildreid settings' prints one "
                         "to start from") from None
    chosen = defaults()
    for name, value in table.items():
        setting = _BY_NAME.get(name.replace("_", "-"))
        if setting is None:
            raise ValueError(f"{path}: unknown setting {name!r}; the settings are "
                             f"{', '.join(_BY_NAME)} ('wildreid settings' explains each)")
        chosen[setting.key] = _checked(setting, value, path)
    return chosen


def _checked(setting: Setting, value: object, path: Path) -> object:
    where = f"{path}: {setting.name} = {value!r}"
    wanted = {int: "a whole number", bool: "true or false", str: "text in quotes",
              Path: "a path in quotes"}[setting.kind]
    # TOML's booleans are Python ints too: true is no number of keypoints.
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if (setting.kind is int and not is_int) or (setting.kind is bool and not isinstance(
            value, bool)) or (setting.kind in (str, Path) and not isinstance(value, str)):
        raise ValueError(f"{where}: give {wanted}")
    if setting.minimum is not None and value < setting.minimum:
        raise ValueError(f"{where}: give {setting.minimum} or more")
    if setting.kind is Path:
        return (path.parent / value) if not Path(value).is_absolute() else Path(value)
    if setting.check is not None:
        try:
            setting.check(value)  # checked now; the run reads the text as the option's
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    return value


def settings_template() -> str:
    """A settings file holding every setting at its default, commented out, with its meaning."""
    lines = ["# Settings of 'wildreid identify --settings FILE' beyond its command line.",
             "# Every setting is shown at its default, commented out: uncomment what you change.",
             "# Paths are read from this file's folder.", ""]
    for setting in SETTINGS:
        lines.append(f"# {setting.help}")
        if setting.default is None:
            lines.append(f"# {setting.name} = ...  (chosen by the run)")
        elif isinstance(setting.default, bool):
            lines.append(f"# {setting.name} = {str(setting.default).lower()}")
        elif isinstance(setting.default, str):
            lines.append(f'# {setting.name} = "{setting.default}"')
        else:
            lines.append(f"# {setting.name} = {setting.default}")
        lines.append("")
    return "\n".join(lines)

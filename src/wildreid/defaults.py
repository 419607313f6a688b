"""Defaults that the command line needs before any model is loaded: kept free of heavy imports
(torch, timm, OpenCV), so ``wildreid --help`` and usage errors answer at once."""

from __future__ import annotations

import os
from pathlib import Path

#: The descriptor used when none is named: offline ImageNet EfficientNet-Lite0.
DEFAULT_MODEL = "efficientnet-lite0"

#: Where features, regions and keypoints are cached (``$WILDREID_CACHE`` overrides).
DEFAULT_CACHE_DIR = Path(os.environ.get("WILDREID_CACHE", Path.home() / ".cache" / "wildreid"))

#: ``--preset``: what each adds to the global descriptor — the parameters of its local
#: re-ranking (:class:`~wildreid.rerank.LocalReranking`), ``None`` for none. (The accurate
#: preset of ``identify`` chooses its matchers per species unless they are named; these are
#: what it runs when they are not chosen, as in a catalog.)
PRESETS: dict[str, dict | None] = {
    "fast": None,
    "accurate": {"features": ("aliked",), "keypoints_on": "animal", "max_keypoints": 512},
}
#: Presets whose first stage is chosen per species by its recall of the individual on the
#: database (docs/decisions/0009: nyala protocol B +7.5 ± 1.4 points top-1 at the same pairs;
#: :func:`wildreid.rerank.preset_reranking` builds it).
FIRST_STAGE_BY_RECALL = {"accurate"}


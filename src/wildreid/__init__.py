"""wildreid: open-set re-identification of individual animals from photographs.

Data flows data -> images -> features -> ranking -> open-set decision -> outputs::

    from wildreid import Identifier, load_dataset
    dataset = load_dataset("path/to/animalclef")
    identifier = Identifier().fit(dataset.database)
    answers = identifier.predict(dataset.query)
"""

import importlib

#: Public names and their modules, imported on first use: ``import wildreid`` (and the command
#: line's ``--help``) stays instant, without loading torch.
_EXPORTS = {
    "NEW_INDIVIDUAL": "wildreid.data", "Dataset": "wildreid.data",
    "DatasetError": "wildreid.data", "load_dataset": "wildreid.data",
    "ImageError": "wildreid.images", "load_image": "wildreid.images",
    "evaluate": "wildreid.metrics",
    "create_descriptor": "wildreid.models", "save_descriptor": "wildreid.models",
    "Identifier": "wildreid.pipeline", "LocalReranking": "wildreid.rerank",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wildreid' has no attribute {name!r}")


__all__ = [
    "NEW_INDIVIDUAL",
    "Dataset",
    "DatasetError",
    "Identifier",
    "ImageError",
    "LocalReranking",
    "create_descriptor",
    "evaluate",
    "load_dataset",
    "load_image",
    "save_descriptor",
]
__version__ = "0.1.0"

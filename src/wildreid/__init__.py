"""wildreid: open-set re-identification of individual animals from photographs.

Data flows data -> images -> features -> ranking -> open-set decision -> outputs::

    from wildreid import Identifier, load_dataset
    dataset = load_dataset("path/to/animalclef")
    identifier = Identifier().fit(dataset.database)
    answers = identifier.predict(dataset.query)
"""

from wildreid.data import NEW_INDIVIDUAL, Dataset, DatasetError, load_dataset
from wildreid.images import ImageError, load_image
from wildreid.metrics import evaluate
from wildreid.models import create_descriptor, save_descriptor
from wildreid.pipeline import Identifier

__all__ = [
    "NEW_INDIVIDUAL",
    "Dataset",
    "DatasetError",
    "Identifier",
    "ImageError",
    "create_descriptor",
    "evaluate",
    "load_dataset",
    "load_image",
    "save_descriptor",
]
__version__ = "0.1.0"

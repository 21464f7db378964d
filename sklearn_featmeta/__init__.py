"""sklearn-featmeta: linear heads on frozen embeddings, robust to spurious correlations.

The main estimator is :class:`MetaAugmentedHeadClassifier` (HSFM). Importing the
package does not import torch; only fitting does.
"""

from ._groups import UNKNOWN_GROUP
from ._meta_head import MetaAugmentedHeadClassifier
from ._presets import PAPER_PRESETS

__version__ = "0.1.0"

__all__ = ["MetaAugmentedHeadClassifier", "PAPER_PRESETS", "UNKNOWN_GROUP", "__version__"]

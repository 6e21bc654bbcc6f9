"""Process set-up every entry point calls first, explicitly (importing a module never changes the
environment): offline-safe library settings and the config resolvers the YAML files use."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent


# Lines of libraries that tell a user nothing about the run: Lightning's advertisements for its
# cloud services and a deprecation inside Lightning itself (torch's pytree API), printed on every
# fit, and faiss's report of which CPU build it loaded. Each is matched by its own text (faiss's
# by its logger, at INFO); every other warning and message is left as it is.
_ADVERTISEMENT = "💡 Tip:"
_LIBRARY_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _NoAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERTISEMENT)


def setup() -> None:
    """Idempotent: sets ``NO_ALBUMENTATIONS_UPDATE`` (albumentations' import otherwise calls the
    network), registers ``${lookout_root:}``, the repository folder, used by ``conf/paths``, and
    keeps Lightning's advertisements and its own internal deprecation out of the output."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    warnings.filterwarnings("ignore", message=_LIBRARY_DEPRECATION)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it loaded, on every import
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdvertisement) for f in logger.filters):
            logger.addFilter(_NoAdvertisement())
    if not OmegaConf.has_resolver("lookout_root"):
        OmegaConf.register_new_resolver("lookout_root", lambda: str(ROOT))

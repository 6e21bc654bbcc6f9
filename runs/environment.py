"""Process set-up every entry point calls first, explicitly (importing a module never changes the
environment): offline-safe library settings and the config resolvers the YAML files use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent


def setup() -> None:
    """Idempotent: sets ``NO_ALBUMENTATIONS_UPDATE`` (albumentations' import otherwise calls the
    network) and registers ``${lookout_root:}``, the repository folder, used by ``conf/paths``."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if not OmegaConf.has_resolver("lookout_root"):
        OmegaConf.register_new_resolver("lookout_root", lambda: str(ROOT))

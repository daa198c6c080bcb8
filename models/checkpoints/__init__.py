"""The checkpoint-adapter layer: safe loading, atomic saving, recognising a source's format and converting it to
our keys and back (official ldm/sgm files, diffusers folders, stage exports), one key check, inflation."""

from models.checkpoints.official import (
    VARIANTS,
    CheckpointSizes,
    LoadedCheckpoint,
    OfficialCheckpointModel,
    load_official_checkpoint,
)
from models.checkpoints.safe_load import (
    SUPPORTED_SUFFIXES,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_state_dict,
    save_state_dict,
)

__all__ = [
    "SUPPORTED_SUFFIXES",
    "VARIANTS",
    "CheckpointSizes",
    "CorruptCheckpointError",
    "LoadedCheckpoint",
    "OfficialCheckpointModel",
    "UnsafeCheckpointError",
    "load_official_checkpoint",
    "load_state_dict",
    "save_state_dict",
]

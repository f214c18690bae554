"""CMIMH model, losses and training (../shared/paper/method.md).

``losses`` pure loss functions; ``cmimh`` the networks and settings; ``train`` the training
loop, model files, Table II diagnostics and device selection.
"""

from pipeline.model.cmimh import CMIMH, DEFAULTS, resolve_settings
from pipeline.model.train import (
    corr_mse,
    diagnostics,
    load_model,
    resolve_device,
    save_model,
    train_cmimh,
)

__all__ = [
    "CMIMH",
    "DEFAULTS",
    "corr_mse",
    "diagnostics",
    "load_model",
    "resolve_device",
    "resolve_settings",
    "save_model",
    "train_cmimh",
]

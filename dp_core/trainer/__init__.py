"""The bundled PyTorch DP-SGD trainer: the only part of dpledger that imports torch.

Importing this package does not import torch (so ``dpledger --help`` stays fast and the service
never loads it); the names below are loaded from their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dp_core.trainer.adaptive_clipping import AdaptiveClipping
    from dp_core.trainer.budget_gate import (
        BudgetGate,
        GateDecision,
        LocalBudgetGate,
        RunPlan,
    )
    from dp_core.trainer.errors import LedgerError, TrainerError, UnsupportedModelError
    from dp_core.trainer.loop import DPTrainer, TrainResult, make_private

__all__ = [
    "AdaptiveClipping",
    "BudgetGate",
    "DPTrainer",
    "GateDecision",
    "LedgerError",
    "LocalBudgetGate",
    "RunPlan",
    "TrainResult",
    "TrainerError",
    "UnsupportedModelError",
    "make_private",
]

_HOMES = {
    "AdaptiveClipping": "adaptive_clipping",
    "BudgetGate": "budget_gate",
    "GateDecision": "budget_gate",
    "LocalBudgetGate": "budget_gate",
    "RunPlan": "budget_gate",
    "LedgerError": "errors",
    "TrainerError": "errors",
    "UnsupportedModelError": "errors",
    "DPTrainer": "loop",
    "TrainResult": "loop",
    "make_private": "loop",
}


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'dp_core.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dp_core.trainer.{_HOMES[name]}"), name)

"""deepshrink: Deep Compression (prune, share weights, entropy-code) for PyTorch models.

    import deepshrink as ds
    ds.prune_(model, ds.PruneConfig(sparsity=0.9))      # then retrain with your own loop
    ds.cluster_weights_(model, ds.ShareConfig())         # optional: train the weights toward their codebooks
    ds.share_weights_(model, ds.ShareConfig())           # then fine-tune centroids with your own loop
    ds.save(model, "model.dsz")
    ds.load("model.dsz", into=fresh_model)
    print(ds.report("model.dsz"))
"""


from .errors import (
    ConfigError,
    DeepShrinkError,
    FormatError,
    InvalidModelError,
    MissingDependencyError,
    ModelMismatchError,
    UnsupportedLayerError,
)
from .format.writer import CoderChoice, EncodeConfig
from .layers.registry import LayerKind, register_layer, supported_types
from .pipeline import CompressResult, PipelineConfig, compress
from .planning.planner import LayerPlan, Plan, PlanConfig, plan
from .planning.sensitivity import Sensitivity, sensitivity
from .reporting.report import Report, report
from .serialize import load, save
from .transforms.pruning import PruneConfig, density, prune_, sparsity_schedule
from .transforms.sharing import Init, ShareConfig, cluster_weights_, restore_, round_codebooks_, share_weights_, strip_

__version__ = "0.1.0"

__all__ = [
    "CoderChoice",
    "CompressResult",
    "ConfigError",
    "DeepShrinkError",
    "EncodeConfig",
    "FormatError",
    "Init",
    "InvalidModelError",
    "LayerKind",
    "LayerPlan",
    "MissingDependencyError",
    "ModelMismatchError",
    "PipelineConfig",
    "Plan",
    "PlanConfig",
    "PruneConfig",
    "Report",
    "Sensitivity",
    "ShareConfig",
    "UnsupportedLayerError",
    "cluster_weights_",
    "compress",
    "density",
    "load",
    "plan",
    "prune_",
    "register_layer",
    "report",
    "restore_",
    "round_codebooks_",
    "save",
    "sensitivity",
    "share_weights_",
    "sparsity_schedule",
    "strip_",
    "supported_types",
]

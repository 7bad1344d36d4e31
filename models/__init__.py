"""fattag models: backbones for (B, 1, F, T) log-mels by name, and the multi-head Tagger.

    from models import create_model, list_models
    list_models()                                   # ['cnn14', 'cnn_skip', 'vgg8', 'wrn28_2'] + any 'timm:<name>'
    model = create_model("vgg8", n_classes=80, heads=("h", "g"), width=0.25)
    out = model(x)                                  # {"emb", "h", "h_cos", "g", "g_cos"}, logits (B, 160)
    model = create_model(**ckpt["model_config"])    # same architecture from a checkpoint's `model.config`
    model = create_model("vgg8", 80, dropout=0.3, block_dropout=0.3)   # dropout before the heads and in every block
    dropout_modules(model)                          # the modules to switch for dropout off / MC dropout

Backbones (registered with @register_model): vgg8 (reference), cnn_skip, wrn28_2 (models/cnn.py), cnn14 (PANNs,
models/panns.py, with load_panns), timm:<name> (models/timm_backbone.py). Weights come only from local files.
Every backbone takes `block_dropout` and applies all its dropout through modules that `dropout_modules` lists.
"""

from . import cnn, panns  # noqa: F401  (register the backbones)
from .layers import dropout_modules
from .panns import load_panns
from .registry import build_backbone, list_models, model_params, register_model
from .tagger import CosineHead, Tagger, create_model

__all__ = [
    "create_model",
    "register_model",
    "list_models",
    "build_backbone",
    "Tagger",
    "CosineHead",
    "load_panns",
    "dropout_modules",
    "model_params",
]

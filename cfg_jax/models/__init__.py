"""The networks of the paper (ADM's UNet and noisy classifier, a toy MLP) and how to build
them from a config.

    model = create_model(config)              # UNet, MLP or Classifier (config.model.name)
    params = init_params(model, rng, config)
    apply_fn = make_apply_fn(model)           # apply_fn(params, z, logsnr, labels) -> ε
                                              # (and w last, if takes_w(model))

`python -m cfg_jax.models --config=configs/<name>.py` prints a summary.
"""
from cfg_jax.models.classifier import Classifier
from cfg_jax.models.factory import (count_params, create_model, dummy_inputs, init_params,
                                    is_classifier, make_apply_fn, num_params, param_shapes,
                                    takes_w)
from cfg_jax.models.mlp import MLP
from cfg_jax.models.unet import UNet

__all__ = ["Classifier", "MLP", "UNet", "count_params", "create_model", "dummy_inputs",
           "init_params", "is_classifier", "make_apply_fn", "num_params", "param_shapes",
           "takes_w"]

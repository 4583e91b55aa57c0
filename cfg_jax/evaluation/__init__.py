"""Measuring a run's samples: FID, IS, precision/recall and accuracy across guidance strengths.

    rows = evaluate(workdir, ws=[0., 1.], num_samples=1000, spec_overrides={"num_steps": 128})

`python -m cfg_jax.evaluate` is the command line over `evaluate`. One concern a module:

  sweep           `evaluate`: sample each (classifier scale, w), measure, report
  metrics         FID, Inception Score, precision/recall on feature vectors (numpy/scipy)
  features        `FeatureNet`, features in device batches, the toy2d points net
  inception       the FID InceptionV3 and the checks of its weight file
  torch_weights   a restricted reader of torch.save state dicts, without torch
  eval_classifier the CNN that measures MNIST-like data: training and cache
  real_data       the run's data as evaluation reads it; cached real-data statistics
  report          metrics.csv, metrics.md and the FID-against-IS plot
"""
from cfg_jax.evaluation.sweep import evaluate

__all__ = ["evaluate"]

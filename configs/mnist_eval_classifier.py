"""The evaluation classifier for MNIST-like data: its logits give IS, its features FID and P&R.

Read by `python -m cfg_jax.evaluate` (--eval_classifier_config), not by cfg_jax.train:
`cfg_jax.evaluation.eval_classifier.EvalClassifier`, a small clean-image CNN, trained with
Adam on the data of the run being evaluated (config.data of that run) the first time it is
needed, and cached under <workdir>/eval_classifier/<source>-<hash>. The last `holdout`
examples of the data order are kept out of training to report its accuracy.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = ml_collections.ConfigDict(dict(channels=(16, 32), features=128, dropout=0.3))
  config.training = ml_collections.ConfigDict(dict(num_steps=800, batch_size=64,
                                                   learning_rate=1e-3, holdout=500))
  return config

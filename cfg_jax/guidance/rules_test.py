"""Every rule of the catalogue with the rest of the sampler: per-example w, both samplers,
the interval, classifier guidance, `.loop` and `.lower`; and rules a user writes."""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import guidance
from cfg_jax import mixture
from cfg_jax import sampling
from cfg_jax.guidance import reference

# Parameters that make a rule do all its work (the others run at their defaults).
PARAMS = {"apg": {"eta": 0., "norm_threshold": 1., "momentum": -0.5}}


def _takes(name, sampler):
  try:
    guidance.RULES[name]().check_sampler(sampler)
  except ValueError:
    return False
  return True


CASES = [(name, sampler) for name in guidance.RULES for sampler in sampling.SAMPLERS
         if _takes(name, sampler)]
NETWORK = reference.image_network()
LABELS = jnp.int32([0, 1, 2, 0, 1, 2])


def _sample_fn(name, sampler, **options):
  return sampling.make_sample_fn(NETWORK.apply_fn, shape=NETWORK.shape, num_steps=8,
                                 null_label=3, prediction="v", sampler=sampler, guidance=name,
                                 guidance_params=PARAMS.get(name), **options)


def test_every_rule_runs_with_some_sampler():
  assert {name for name, _ in CASES} == set(guidance.RULES)


@pytest.mark.parametrize("name,sampler", CASES)
def test_per_example_w_is_each_examples_own(name, sampler):
  fn, rng = _sample_fn(name, sampler), jax.random.PRNGKey(0)
  w = jnp.float32([0.5, 0.5, 0.5, 3., 3., 3.])
  mixed = fn(None, rng, LABELS, w)
  np.testing.assert_allclose(mixed[:3], fn(None, rng, LABELS, 0.5)[:3], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mixed[3:], fn(None, rng, LABELS, 3.)[3:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,sampler", CASES)
def test_an_interval_holding_no_step_is_unguided_sampling(name, sampler):
  rng = jax.random.PRNGKey(1)
  outside = _sample_fn(name, sampler, guidance_interval=(30., 40.))(None, rng, LABELS, 3.)
  np.testing.assert_array_equal(outside, _sample_fn(name, sampler)(None, rng, LABELS, None))
  part = _sample_fn(name, sampler, guidance_interval=(-4., 4.))(None, rng, LABELS, 3.)
  assert np.all(np.isfinite(part)) and not np.allclose(part, outside)


@pytest.mark.parametrize("name,sampler", CASES)
def test_loop_and_lower_compute_what_the_scan_computes(name, sampler):
  fn, rng = _sample_fn(name, sampler, guidance_interval=(-4., 4.)), jax.random.PRNGKey(2)
  w = jnp.float32([0., 1., 2., 3., 4., 5.])
  scan = fn(None, rng, LABELS, w)
  np.testing.assert_allclose(fn.loop(None, rng, LABELS, w), scan, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fn.lower(None, rng, LABELS, w).compile()(rng, fn._check(
      None, LABELS, w, None, None, None)), scan, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,sampler", CASES)
def test_every_rule_combines_with_classifier_guidance(name, sampler):
  gm = mixture.GaussianMixture(jnp.float32([[1., 0.], [-1., 0.]]),
                               jnp.float32([[[0.3, 0.], [0., 0.1]]] * 2), jnp.float32([.5, .5]))
  make = lambda classifier_fn: sampling.make_sample_fn(
      mixture.eps_fn(gm), shape=(2,), num_steps=16, null_label=2, sampler=sampler,
      guidance=name, guidance_params=PARAMS.get(name), classifier_fn=classifier_fn)
  labels, rng = jnp.zeros((64,), jnp.int32), jax.random.PRNGKey(3)
  plain = make(None)(None, rng, labels, 1.)
  zero = make(mixture.classifier_fn(gm))(None, rng, labels, 1., classifier_params=None,
                                         classifier_scale=0.)
  np.testing.assert_allclose(zero, plain, rtol=1e-4, atol=1e-4)
  pushed = make(mixture.classifier_fn(gm))(None, rng, labels, 1., classifier_params=None,
                                           classifier_scale=2.)
  assert float(pushed[:, 0].mean()) > float(plain[:, 0].mean())  # class 0 sits at x = +1


@dataclasses.dataclass(frozen=True)
class CountingCFG(guidance.Rule):
  """A rule as a user writes it: CFG that counts its guided steps in its state."""
  name = "counting_cfg"

  def init(self, z):
    return jnp.zeros((), jnp.int32)

  def __call__(self, inputs: guidance.Inputs, state: Any):
    out, _ = guidance.CFG()(inputs, ())
    return out, state + 1


def test_a_rule_object_written_outside_the_catalogue():
  fn = sampling.make_sample_fn(NETWORK.apply_fn, shape=NETWORK.shape, num_steps=8,
                               null_label=3, prediction="v", guidance=CountingCFG())
  rng = jax.random.PRNGKey(4)
  np.testing.assert_allclose(fn(None, rng, LABELS, 2.), _sample_fn("cfg", "stochastic")(
      None, rng, LABELS, 2.), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rule,match", [
    (lambda inputs, state: (inputs.cond, state),
     "must return \\(cfg_jax.guidance.Guided, state\\)"),
    (CountingCFG, "or a rule object with init"),
])
def test_a_rule_that_breaks_the_contract_is_refused_before_compiling(rule, match):
  class NoGuided:
    def init(self, z):
      return ()

    def __call__(self, inputs, state):
      return rule(inputs, state)

  bad = NoGuided() if rule is not CountingCFG else CountingCFG  # the class, not an object
  with pytest.raises(ValueError, match=match):
    sampling.make_sample_fn(NETWORK.apply_fn, shape=NETWORK.shape, num_steps=4, null_label=3,
                            guidance=bad)


def test_a_rule_whose_state_changes_shape_is_refused():
  @dataclasses.dataclass(frozen=True)
  class Growing(guidance.Rule):
    name = "growing"

    def init(self, z):
      return jnp.zeros((1,))

    def __call__(self, inputs, state):
      return guidance.CFG()(inputs, ())[0], jnp.concatenate([state, state])

  with pytest.raises(ValueError, match="must return a state of the structure, shapes"):
    sampling.make_sample_fn(NETWORK.apply_fn, shape=NETWORK.shape, num_steps=4, null_label=3,
                            guidance=Growing())


def test_the_catalogue_and_its_parameters():
  assert tuple(guidance.RULES) == ("cfg", "rescale", "apg", "cfgpp", "cfg_zero_star")
  assert guidance.PARAM_DEFAULTS == {"phi": 0.7, "eta": 0., "norm_threshold": 0.,
                                     "momentum": 0., "zero_init_steps": 1}
  # The config holds every rule's parameters; each rule takes its own.
  assert guidance.make_rule("apg", guidance.PARAM_DEFAULTS | {"eta": 0.5}) == guidance.APG(
      eta=0.5)
  with pytest.raises(ValueError, match="guidance='cfg2' is invalid: it must be one of"):
    guidance.make_rule("cfg2")
  with pytest.raises(ValueError, match=r"guidance_params has \['gamma'\], which no rule takes"):
    guidance.make_rule("cfg", {"gamma": 1.})
  with pytest.raises(ValueError, match="guidance_params.momentum=1.0 is invalid: it must be a "
                                       "number in \\(-1, 1\\)"):
    guidance.make_rule("apg", {"momentum": 1.})
  with pytest.raises(ValueError, match="guidance_params.zero_init_steps=0.5 is invalid"):
    guidance.CFGZeroStar(zero_init_steps=0.5)
  with pytest.raises(ValueError, match="a rule object holds its own"):
    guidance.make_rule(guidance.APG(), {"eta": 1.})

"""Plain-numpy references for the guidance tests: Algorithm 2's steps in float64.

A rule is written here as a numpy function of its paper, `rule(cond, uncond, z, logsnr, w,
step, state, prediction) -> (x, eps, eps_next or None, state)` (state None before the
first step; prediction the outputs' parameterization), and `sample` runs it through the
deterministic or the stochastic sampler. The noise is drawn as `cfg_jax.sampling` draws it (z_1 from the first
half of the key, step i's from `fold_in` of the second half), so that the samples of the
two can be compared value by value.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfg_jax import guidance
from cfg_jax import mixture

Rule = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray | None, Any]]


def expand(a: Any, x: np.ndarray) -> np.ndarray:
  """A scalar or per-example [B] value broadcast against x [B, ...]."""
  a = np.asarray(a, np.float64)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def alpha_sigma(logsnr: Any) -> tuple[np.ndarray, np.ndarray]:
  """α = sqrt(sigmoid(λ)), σ = sqrt(sigmoid(-λ))."""
  logsnr = np.asarray(logsnr, np.float64)
  return np.sqrt(1. / (1. + np.exp(-logsnr))), np.sqrt(1. / (1. + np.exp(logsnr)))


def to_x_eps(z: np.ndarray, out: np.ndarray, logsnr: Any, prediction: str
             ) -> tuple[np.ndarray, np.ndarray]:
  """(x̂, ε̂) of a network output in its parameterization."""
  alpha, sigma = (expand(a, z) for a in alpha_sigma(logsnr))
  if prediction == "eps":
    return (z - sigma * out) / alpha, out
  if prediction == "x":
    return out, (z - alpha * out) / sigma
  return alpha * z - sigma * out, sigma * z + alpha * out


def eps_from_x(z: np.ndarray, x: np.ndarray, logsnr: Any) -> np.ndarray:
  alpha, sigma = (expand(a, z) for a in alpha_sigma(logsnr))
  return (z - alpha * x) / sigma


def v_of(x: np.ndarray, eps: np.ndarray, logsnr: Any) -> np.ndarray:
  """v = α ε - σ x."""
  alpha, sigma = (expand(a, x) for a in alpha_sigma(logsnr))
  return alpha * eps - sigma * x


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-example inner product, [B, 1, ...]."""
  return np.sum(a * b, axis=tuple(range(1, a.ndim)), keepdims=True)


def sample(network: Callable[[np.ndarray, float, np.ndarray], np.ndarray], rule: Rule, *,
           rng: jax.Array, labels: np.ndarray, null_label: int, shape: tuple[int, ...],
           logsnrs: np.ndarray, w: Any, sampler: str, prediction: str = "eps", v: float = 0.3,
           guided: np.ndarray | None = None, w_scales: np.ndarray | None = None,
           clip_x: bool = False) -> np.ndarray:
  """x after the T steps along `logsnrs`: `network(z, logsnr, labels)` is the model (its
  output in `prediction`), `rule` mixes the two outputs at the steps where `guided`."""
  num_steps = len(logsnrs)
  guided = np.ones(num_steps, bool) if guided is None else guided
  w_scales = np.ones(num_steps) if w_scales is None else w_scales
  rng_init, rng_steps = jax.random.split(rng)
  z = np.asarray(jax.random.normal(rng_init, (len(labels), *shape)), np.float64)
  state = None
  for i, logsnr in enumerate(np.asarray(logsnrs, np.float64)):
    if guided[i]:
      cond = network(z, logsnr, labels)
      uncond = network(z, logsnr, np.full_like(labels, null_label))
      x, eps, eps_next, state = rule(cond, uncond, z, logsnr, np.asarray(w) * w_scales[i], i,
                                     state, prediction)
    else:
      x, eps = to_x_eps(z, network(z, logsnr, labels), logsnr, prediction)
      eps_next = None
    if clip_x:
      x = np.clip(x, -1., 1.)
      eps = eps_from_x(z, x, logsnr)
    if i == num_steps - 1:
      return x
    logsnr_next = float(logsnrs[i + 1])
    alpha_next, sigma_next = alpha_sigma(logsnr_next)
    if sampler == "ddim":
      z = alpha_next * x + sigma_next * (eps if eps_next is None else eps_next)
    else:
      alpha, sigma = alpha_sigma(logsnr)
      ratio = np.exp(logsnr - logsnr_next)  # e^{λ - λ'}
      mean = ratio * (alpha_next / alpha) * z + (1. - ratio) * alpha_next * x
      var = ((1. - ratio) * sigma_next**2) ** (1. - v) * ((1. - ratio) * sigma**2) ** v
      noise = np.asarray(jax.random.normal(jax.random.fold_in(rng_steps, i), z.shape))
      z = mean + np.sqrt(var) * noise
  raise ValueError("logsnrs must hold at least one step.")


class Network(NamedTuple):
  """A network for the tests: `apply_fn(params, z, logsnr, labels)` (params unused), the
  shape of an example, the label of ∅ and what it predicts."""
  apply_fn: Callable[..., jax.Array]
  shape: tuple[int, ...]
  null_label: int
  prediction: str

  def numpy_fn(self, z: np.ndarray, logsnr: float, labels: np.ndarray) -> np.ndarray:
    """The same network on float64 arrays (computed in float32)."""
    out = self.apply_fn(None, jnp.float32(z), jnp.full((len(z),), logsnr, jnp.float32),
                        jnp.int32(labels))
    return np.asarray(out, np.float64)


def mixture_network() -> Network:
  """The exact ε of three anisotropic 2-D Gaussians, one per class; ∅ is label 3."""
  means = jnp.float32([[1.5, 0.], [-0.75, 1.3], [-0.75, -1.3]])
  covs = jnp.float32([[[0.10, 0.03], [0.03, 0.05]], [[0.04, 0.00], [0.00, 0.12]],
                      [[0.08, -0.02], [-0.02, 0.06]]])
  return Network(mixture.eps_fn(mixture.GaussianMixture(means, covs, jnp.full((3,), 1 / 3))),
                 (2,), 3, "eps")


def image_network() -> Network:
  """A smooth v-predicting toy on 4x4x2 "images" of 3 classes (∅ is label 3): each class
  pulls toward its own random pattern, more as λ grows."""
  patterns = jax.random.normal(jax.random.PRNGKey(42), (4, 4, 4, 2))

  def apply_fn(params, z, logsnr, labels):
    del params
    gate = jax.nn.sigmoid(logsnr / 4.)[:, None, None, None]
    return 0.5 * jnp.tanh(z) - gate * patterns[labels] + 0.1 * z * (1. - gate)

  return Network(apply_fn, (4, 4, 2), 3, "v")


def one_step_inputs(network: Network, batch: int = 5, seed: int = 0) -> guidance.Inputs:
  """Random inputs of one guided step of `network`'s shape and parameterization (step 0)."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  shape = (batch, *network.shape)
  return guidance.Inputs(cond=jax.random.normal(keys[0], shape),
                         uncond=jax.random.normal(keys[1], shape),
                         z=jax.random.normal(keys[2], shape),
                         logsnr=jax.random.uniform(keys[3], (batch,), minval=-6., maxval=6.),
                         w=jax.random.uniform(keys[4], (batch,), minval=0., maxval=4.),
                         step=jnp.int32(0), prediction=network.prediction)


def compare_one_step(rule: Any, numpy_rule: Rule, network: Network, *, step: int = 0,
                     state: Any = None) -> None:
  """Asserts the rule's (x̃, ε̃, ε_next) of one step equal the numpy reference's."""
  inputs = one_step_inputs(network)._replace(step=jnp.int32(step))
  out, _ = rule(inputs, rule.init(inputs.z) if state is None else state)
  args = [np.asarray(a, np.float64) for a in (inputs.cond, inputs.uncond, inputs.z,
                                               inputs.logsnr, inputs.w)]
  x, eps, eps_next, _ = numpy_rule(*args, step, None, network.prediction)
  np.testing.assert_allclose(out.x, x, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out.eps, eps, rtol=1e-4, atol=1e-4)
  assert (out.eps_next is None) == (eps_next is None)
  if eps_next is not None:
    np.testing.assert_allclose(out.eps_next, eps_next, rtol=1e-4, atol=1e-4)


def compare_trajectory(make_sample_fn: Callable[..., Any], guidance_: Any, numpy_rule: Rule,
                       network: Network, *, sampler: str,
                       guidance_params: dict[str, Any] | None = None, num_steps: int = 12,
                       w: Any = 2., guidance_interval: tuple[float, ...] = (),
                       w_schedule: str = "constant", atol: float = 5e-4) -> np.ndarray:
  """Asserts that `make_sample_fn` (cfg_jax.sampling's) with the rule draws what the numpy
  reference draws from the same noise (4 examples of each class); returns the samples."""
  sample_fn = make_sample_fn(
      network.apply_fn, shape=network.shape, num_steps=num_steps,
      null_label=network.null_label, prediction=network.prediction, sampler=sampler,
      guidance=guidance_, guidance_params=guidance_params, w_schedule=w_schedule,
      guidance_interval=guidance_interval)
  labels = np.repeat(np.arange(network.null_label), 4).astype(np.int32)
  rng = jax.random.PRNGKey(7)
  x = np.asarray(sample_fn(None, rng, labels, w))
  expected = sample(network.numpy_fn, numpy_rule, rng=rng, labels=labels,
                    null_label=network.null_label, shape=network.shape,
                    logsnrs=sample_fn.logsnrs, w=w, sampler=sampler,
                    prediction=network.prediction, guided=sample_fn.guided,
                    w_scales=sample_fn.w_scales)
  np.testing.assert_allclose(x, expected, rtol=1e-3, atol=atol)
  return x

"""Tests of the XLA options of cfg_jax's programs."""
import jax

from cfg_jax import xla_options


def test_cpu_programs_turn_ynnpack_off_unless_asked_for_xla_defaults(monkeypatch):
  assert jax.default_backend() == "cpu"
  assert xla_options.compiler_options() == {"xla_cpu_experimental_ynn_fusion_type": ""}
  monkeypatch.setenv("CFG_JAX_XLA_DEFAULTS", "1")
  assert xla_options.compiler_options() == {}


def test_the_options_compile_and_keep_results():
  f = lambda x: jax.numpy.tanh(x @ x.T).sum(0)
  x = jax.random.normal(jax.random.key(0), (8, 8))
  ours = jax.jit(f, compiler_options=xla_options.compiler_options())(x)
  assert jax.numpy.allclose(ours, jax.jit(f)(x), atol=1e-5)


def test_jit_takes_the_options_at_top_level_and_nests_without_them():
  f = xla_options.jit(lambda x: 2. * x)
  assert float(f(1.)) == 2.
  assert float(jax.jit(lambda x: f(x) + 1.)(1.)) == 3.
  assert float(jax.jit(lambda: f(1.))()) == 2.  # nested, with only constant arguments
  assert jax.vmap(f)(jax.numpy.ones(3)).tolist() == [2., 2., 2.]
  assert float(jax.grad(f)(1.)) == 2.

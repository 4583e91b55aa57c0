"""Tests of the sample-quality peer: a short wall-clock training run, guidance, sampling and
the command line, on a tiny UNet2DModel."""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from bench import peer_quality  # pylint: disable=g-import-not-at-top

TINY = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 8}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_model(seed: int = 0):
  torch.manual_seed(seed)
  return peer_quality.build_model(**TINY).eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2.4-second training run of the tiny model on 20 random images, reports at 1.2 and 2.4 s."""
  out = str(tmp_path_factory.mktemp("run"))
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (20, 32, 32, 1)).astype(np.float32)
  labels = rng.integers(0, 10, 20)
  log = peer_quality.train(x, labels, minutes=0.04, report_minutes=[0.02, 0.04], out=out,
                           seed=0, model_config=TINY)
  return out, log


def test_imports_neither_jax_nor_cfg_jax():
  """torch and jax must not share the peer's process."""
  with open(peer_quality.__file__) as f:
    tree = ast.parse(f.read())
  names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
  names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
  assert not {m for m in names if m.split(".")[0] in ("jax", "flax", "cfg_jax")}, names


def test_default_model_is_the_typical_one():
  assert peer_quality.num_params(peer_quality.build_model()) == 1_164_513


def test_train_writes_the_ema_checkpoints_and_the_log(run):
  out, log = run
  assert sorted(os.listdir(out)) == ["minute_0.02.pt", "minute_0.04.pt", "train_log.json"]
  with open(os.path.join(out, "train_log.json")) as f:
    assert json.load(f) == log
  first, last = log["reports"]
  assert (first["minutes"], last["minutes"]) == (0.02, 0.04)
  assert 0 < first["steps"] <= last["steps"]
  assert 1.2 <= first["seconds"] <= last["seconds"] and last["seconds"] >= 2.4
  assert first["num_params"] == log["num_params"] == peer_quality.num_params(_tiny_model())
  assert log["model"] == TINY | {"sample_size": 32}
  assert set(log["versions"]) == {"torch", "diffusers"}
  model = peer_quality.load_model(os.path.join(out, last["checkpoint"]),
                                  os.path.join(out, "train_log.json"))
  saved = torch.load(os.path.join(out, last["checkpoint"]))
  assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
  assert not all(torch.equal(v, _tiny_model().state_dict()[k]) for k, v in saved.items())


def test_guided_eps_mixes_the_conditional_and_null_labels_and_is_the_conditional_at_w0():
  model = _tiny_model()
  z = torch.randn(3, 1, 32, 32)
  labels = torch.tensor([0, 4, 9])
  t = torch.tensor([10, 500, 990])
  with torch.inference_mode():
    eps_c = model(z, t, class_labels=labels).sample
    eps_u = model(z, t, class_labels=torch.full_like(labels, 10)).sample
    for w, want in ((0., eps_c), (1., 2 * eps_c - eps_u), (3., 4 * eps_c - 3 * eps_u)):
      torch.testing.assert_close(peer_quality.guided_eps(model, z, t, labels, w), want,
                                 atol=1e-5, rtol=1e-5)
    for w in (0., 1.):
      scalar_t = peer_quality.guided_eps(model, z, torch.tensor(500), labels, w)
      torch.testing.assert_close(scalar_t, peer_quality.guided_eps(model, z, t * 0 + 500, labels,
                                                                   w))


def test_sample_is_uint8_deterministic_and_depends_on_the_sampler():
  model = _tiny_model()
  labels = np.array([1, 2, 3])
  kw = dict(w=1., steps=2, seed=0, batch_size=2)
  ddim = peer_quality.sample(model, labels, sampler="ddim", **kw)
  assert ddim.dtype == np.uint8 and ddim.shape == (3, 32, 32, 1)
  np.testing.assert_array_equal(ddim, peer_quality.sample(model, labels, sampler="ddim", **kw))
  assert not np.array_equal(ddim, peer_quality.sample(model, labels, sampler="ddpm", **kw))
  assert not np.array_equal(ddim, peer_quality.sample(model, labels, sampler="ddim",
                                                      **kw | {"seed": 1}))


def test_sample_command_writes_x_ws_and_labels(run, tmp_path):
  out, log = run
  np.savez(tmp_path / "labels.npz", label=np.array([7, 0, 3]))
  peer_quality.main([
      "sample", f"--checkpoint={os.path.join(out, log['reports'][-1]['checkpoint'])}",
      f"--config={os.path.join(out, 'train_log.json')}", f"--labels={tmp_path / 'labels.npz'}",
      "--ws=0,2", "--sampler=ddpm", "--steps=2", "--batch_size=2",
      f"--out={tmp_path / 'samples.npz'}"])
  with np.load(tmp_path / "samples.npz") as f:
    assert sorted(f) == ["label", "ws", "x"]
    assert f["x"].dtype == np.uint8 and f["x"].shape == (2, 3, 32, 32, 1)
    np.testing.assert_array_equal(f["ws"], np.float32([0, 2]))
    np.testing.assert_array_equal(f["label"], [7, 0, 3])
    assert not np.array_equal(f["x"][0], f["x"][1])


def test_command_line_rejects_a_bad_flag_in_one_line():
  result = subprocess.run(
      [sys.executable, "-m", "bench.peer_quality", "sample", "--checkpoint=a.pt",
       "--config=log.json", "--labels=l.npz", "--ws=0", "--sampler=euler", "--out=o.npz"],
      cwd=ROOT, capture_output=True, text=True, check=False,
      env=os.environ | {"PYTHONPATH": ROOT})
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and "--sampler" in result.stderr
  assert "ddim" in result.stderr and "ddpm" in result.stderr


@pytest.mark.parametrize("args, flag", [
    (["train", "--minutes=0", "--report_minutes=0"], "--minutes"),
    (["train", "--minutes=2", "--report_minutes=1,1,2"], "--report_minutes"),
    (["train", "--minutes=2", "--report_minutes=1"], "--report_minutes"),
    (["train", "--minutes=2", "--report_minutes=2", "--data=missing.npz"], "--data"),
    (["sample", "--steps=0"], "--steps"),
    (["sample", "--ws=,"], "--ws"),
    (["sample", "--checkpoint=missing.pt"], "--checkpoint"),
])
def test_bad_flags_are_rejected_before_the_model_is_built(args, flag, capsys, tmp_path,
                                                          monkeypatch):
  monkeypatch.setattr(peer_quality, "build_model", lambda **_: pytest.fail("model built"))
  defaults = {"train": ["--data=d.npz", "--out=o", "--minutes=1", "--report_minutes=1"],
              "sample": ["--checkpoint=c.pt", "--config=c.json", "--labels=l.npz", "--ws=0",
                         "--sampler=ddim", "--out=o.npz"]}[args[0]]
  given = {a.split("=")[0] for a in args[1:]}
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as exit_info:
    peer_quality.main(args + [a for a in defaults if a.split("=")[0] not in given])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and flag in err, err


def test_the_model_is_built_for_the_size_of_the_digits_it_trains_on(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (8, 28, 28, 1)).astype(np.float32)
  log = peer_quality.train(x, rng.integers(0, 10, 8), minutes=0.005, report_minutes=[0.005],
                           out=str(tmp_path), model_config=TINY)
  assert log["model"]["sample_size"] == 28
  model = peer_quality.load_model(str(tmp_path / log["reports"][-1]["checkpoint"]),
                                  str(tmp_path / "train_log.json"))
  x = peer_quality.sample(model, np.array([3, 5]), w=1., sampler="ddim", steps=2)
  assert x.dtype == np.uint8 and x.shape == (2, 28, 28, 1)


def test_train_command_rejects_digits_of_a_size_the_unet_cannot_halve(tmp_path, capsys):
  np.savez(tmp_path / "d.npz", x=np.zeros((4, 30, 30, 1), np.float32), label=np.arange(4))
  with pytest.raises(SystemExit):
    peer_quality.main(["train", f"--data={tmp_path / 'd.npz'}", "--minutes=1",
                       "--report_minutes=1", f"--out={tmp_path / 'o'}"])
  assert "[N, S, S, 1] with S divisible by 4, got float32 (4, 30, 30, 1)" in capsys.readouterr().err

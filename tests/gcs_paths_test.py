"""A gs:// workdir end to end, on a fake Cloud Storage in a temporary folder.

Every path of a run goes through etils.epath (or orbax, which uses epath and
tensorstore), so a `gs://bucket/run` workdir must reach storage as written. The
`fake_gcs` fixture stores `gs://<bucket>/<key>` at `<tmp>/bucket/<bucket>/<key>` and
runs the code from an empty working directory: a path that lost its scheme on the way
(os.path, pathlib, `str.split`) would create a local `gs:` folder there instead.
"""
import json
import os
import pathlib
import time

from etils import epath
from etils.epath import testing as epath_testing
import numpy as np
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils
from PIL import Image
import pytest

from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import input_pipeline
from cfg_jax import metric_writer_test
from cfg_jax import runs
from cfg_jax import test_configs
from cfg_jax import train
from cfg_jax import workdir_lock

WORKDIR = "gs://cfg-jax-test/runs/toy2d"


class FakeGCS:
  """Maps gs:// paths to a local folder and back."""

  def __init__(self, root: pathlib.Path):
    self.root = root

  def local(self, path) -> str:
    path = os.fspath(path)
    return str(self.root / path[len("gs://"):]) if path.startswith("gs://") else path

  def remote(self, path, like) -> str:
    path = os.fspath(path)
    if not os.fspath(like).startswith("gs://"):
      return path
    return "gs://" + os.path.relpath(path, self.root)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """Routes gs:// I/O of epath (so of the TensorBoard writer too) and of orbax's tensorstore
  to tmp_path.

  epath: its TensorFlow backend is turned off (EPATH_USE_TF) and its public test mock
  maps paths. Orbax: tensorstore gets a local kvstore for gs:// directories, and the
  bucket has no hierarchical namespace (orbax would ask Cloud Storage).
  """
  fake = FakeGCS(tmp_path / "bucket")
  fake.root.mkdir()
  one = lambda fn, path, *args, **kwargs: fn(fake.local(path), *args, **kwargs)
  two = lambda fn, src, dst, *args, **kwargs: fn(fake.local(src), fake.local(dst), *args,
                                                  **kwargs)

  def glob(fn, pattern):
    return [fake.remote(p, pattern) for p in fn(fake.local(pattern))]

  def walk(fn, top, **kwargs):
    for root, dirs, files in fn(fake.local(top), **kwargs):
      yield fake.remote(root, top), dirs, files

  monkeypatch.setenv("EPATH_USE_TF", "false")
  build_kvstore_tspec = tensorstore_utils.build_kvstore_tspec
  monkeypatch.setattr(tensorstore_utils, "build_kvstore_tspec",
                      lambda directory, *args, **kwargs: build_kvstore_tspec(
                          fake.local(directory), *args, **kwargs))
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with epath_testing.mock_epath(open=one, exists=one, isdir=one, listdir=one, makedirs=one,
                                mkdir=one, remove=one, rmtree=one, stat=one, glob=glob,
                                walk=walk, copy=two, rename=two, replace=two):
    yield fake
  assert not os.listdir(cwd), f"a path lost its gs:// and was written locally: {os.listdir(cwd)}"


def test_the_fake_keeps_gs_paths_out_of_the_local_filesystem(fake_gcs):
  path = epath.Path("gs://cfg-jax-test/a/b.txt")
  path.parent.mkdir(parents=True)
  path.write_text("x")
  assert (fake_gcs.root / "cfg-jax-test" / "a" / "b.txt").read_text() == "x"
  assert [os.fspath(p) for p in path.parent.glob("*.txt")] == ["gs://cfg-jax-test/a/b.txt"]
  assert [os.fspath(root) for root, _, _ in epath.Path("gs://cfg-jax-test").walk()] == [
      "gs://cfg-jax-test", "gs://cfg-jax-test/a"]


def test_train_resume_and_sample_with_a_gs_workdir(fake_gcs):
  bucket_run = fake_gcs.root / WORKDIR[len("gs://"):]
  config = test_configs.toy2d(num_steps=4, checkpoint_every=2, sample_every=4, max_to_keep=3)
  config.sampling.w = (0., 1.)
  assert train.train(config, WORKDIR) == 0
  config.training.num_steps = 6
  assert train.train(config, WORKDIR) == 0  # resumes from step 4

  assert sorted(p.name for p in (bucket_run / "checkpoints").iterdir()) == ["2", "4", "6"]
  assert sorted(p.name for p in (bucket_run / "samples").iterdir()) == [
      "step_00000004_w0.png", "step_00000004_w1.png", "step_00000006_w0.png",
      "step_00000006_w1.png"]
  events = metric_writer_test.read_events(bucket_run / "tensorboard")  # two runs, two files
  assert [e.step for e in events.Scalars("loss")] == [4, 6]  # log_every=4, and the last step
  assert [e.step for e in events.Images("samples/w1")] == [4, 6]
  assert json.loads(config_files.load_config(WORKDIR).to_json()) == json.loads(config.to_json())
  checkpointer = checkpointing.Checkpointer(WORKDIR, read_only=True)
  assert os.fspath(checkpointer.directory) == f"{WORKDIR}/checkpoints"
  checkpointer.close()

  # What `python -m cfg_jax.generate --workdir=gs://...` does.
  run = runs.load_run(WORKDIR)
  assert run.step == 6
  labels = runs.make_labels(run.config.data.num_classes, per_class=2)
  x = runs.sample_in_batches(runs.make_run_sample_fn(run, runs.sampling_spec(run.config, {"num_steps": 2})), run.params, labels,
                             w=1., batch_size=len(labels), seed=0, progress=False)
  runs.write_sample_files(x, labels, epath.Path(WORKDIR) / "samples_cli", "w1",
                     num_classes=run.config.data.num_classes)
  assert sorted(p.name for p in (bucket_run / "samples_cli").iterdir()) == ["w1.npz", "w1.png"]
  assert not (bucket_run / "train.lock").exists()


def _bucket_files(fake_gcs):
  return {str(p.relative_to(fake_gcs.root)): p.read_bytes() for p in
          sorted(fake_gcs.root.rglob("*")) if p.is_file()}


def test_readers_of_a_gs_workdir_write_nothing_and_keep_an_in_flight_save(fake_gcs):
  config = test_configs.toy2d(num_steps=4, checkpoint_every=2)
  assert train.train(config, WORKDIR) == 0
  # A save in progress: on Cloud Storage orbax writes the step's folder in place and
  # marks it complete with commit_success.txt last.
  in_flight = epath.Path(WORKDIR) / "checkpoints" / "6" / "state"
  in_flight.mkdir(parents=True)
  (in_flight / "_METADATA").write_text("{}")
  before = _bucket_files(fake_gcs)
  run = runs.load_run(WORKDIR)
  assert run.step == 4 and _bucket_files(fake_gcs) == before


def test_a_trainer_holding_a_gs_workdir_refuses_a_second_one(fake_gcs):
  now = time.time()
  lock = epath.Path(WORKDIR) / workdir_lock.LOCK_FILE
  lock.parent.mkdir(parents=True)
  lock.write_text(json.dumps({"host": "tpu-vm-3", "pid": 42, "start": now - 600,
                              "heartbeat": now - 5, "token": "theirs"}))
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=rf"^Another trainer is using {WORKDIR}: host tpu-vm-3, pid 42, "):
    train.train(test_configs.toy2d(num_steps=4), WORKDIR)
  assert sorted(os.listdir(fake_gcs.root / WORKDIR[len("gs://"):])) == ["train.lock"]


def test_load_config_names_the_gs_workdir(fake_gcs):
  with pytest.raises(FileNotFoundError, match=r"--workdir=gs://cfg-jax-test/nothing holds no"):
    config_files.load_config("gs://cfg-jax-test/nothing")


def test_folder_source_on_gs(fake_gcs):
  images = fake_gcs.root / "cfg-jax-test" / "images"
  for label, value in enumerate((0, 255)):
    (images / f"class_{label}" / "sub").mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((8, 8), value, np.uint8)).save(
          images / f"class_{label}" / "sub" / f"{i}.png")
  config = test_configs.toy2d()
  config.data.update(source="folder:gs://cfg-jax-test/images", num_classes=2, image_size=8,
                     channels=1)
  dataset = input_pipeline.create_dataset(config)
  batch = dataset.batch(0, batch_size=6)
  assert len(dataset) == 6
  np.testing.assert_array_equal(batch["x"][..., 0].mean(axis=(1, 2)),
                                np.where(batch["label"] == 0, -1., 1.))

"""The package's imports follow the layers of docs/architecture.md."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# docs/architecture.md's layers; a module may import from its own layer and those above.
LAYERS = {
    1: ("checks", "schedules", "diffusion", "guidance", "mixture", "ema"),
    2: ("sampling", "xla_options", "distillation"),
    3: ("config_lib", "input_pipeline", "data_sources", "images", "extras", "configs",
        "test_configs"),
    4: ("models",),
    5: ("parallel", "checkpointing", "checkpoint_errors", "config_files", "ema_snapshots",
        "workdir_lock", "files",
        "metric_writer", "visualization", "runtime"),
    6: ("runs",),
    7: ("train", "distill"),
    8: ("evaluation",),
    9: ("generate", "evaluate", "posthoc_ema", "cli"),
}
LAYER = {name: layer for layer, names in LAYERS.items() for name in names}


def _top(module: str) -> str:
  """The first name under cfg_jax of a dotted module name."""
  return module.split(".")[1] if module.startswith("cfg_jax.") else module


def _imports(path: pathlib.Path) -> set[str]:
  """The cfg_jax modules (first names under cfg_jax) that a file imports."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "cfg_jax":
        found |= {alias.name for alias in node.names}
      elif node.module.startswith("cfg_jax."):
        found.add(_top(node.module))
    elif isinstance(node, ast.Import):
      found |= {_top(a.name) for a in node.names if a.name.startswith("cfg_jax.")}
  return found


def test_every_module_has_a_layer_and_imports_none_below_it():
  sources = [p for p in (ROOT / "cfg_jax").rglob("*.py")
             if not p.name.endswith("_test.py") and p.name not in ("conftest.py", "__init__.py")]
  sources += list((ROOT / "configs").glob("*.py"))
  violations = []
  for path in sources:
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = "configs" if parts[0] == "configs" else parts[1]
    assert name in LAYER, f"{path} is in no layer of docs/architecture.md"
    for imported in _imports(path) - {name}:
      if LAYER[imported] > LAYER[name]:
        violations.append(f"{path.relative_to(ROOT)} (layer {LAYER[name]}) imports {imported} "
                          f"(layer {LAYER[imported]})")
  assert not violations, violations


def _bench_imports(path: pathlib.Path) -> set[str]:
  """The bench modules that a file imports."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == "bench":
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bench."):
      found.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bench.")}
  return found


def test_bench_programs_share_only_helpers_never_each_other():
  programs = {p.stem for p in (ROOT / "bench").glob("*.py")
              if not p.name.endswith("_test.py") and "\ndef main(" in p.read_text()}
  assert {"run", "quality", "guidance", "distillation"} <= programs
  violations = [f"bench/{p.name} imports bench.{m}"
                for p in (ROOT / "bench").glob("*.py") if not p.name.endswith("_test.py")
                for m in _bench_imports(p) & programs if m != p.stem]
  assert not violations, violations

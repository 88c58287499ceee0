"""The benchmarks evaluation knows: one `Evaluator` per benchmark, registered by its module.

Every module of `aprn_jax/evaluation/benchmarks/` (a benchmark family: CFP, LFW, .bin packs,
IJB-A, IJB-B/C, MegaFace, Multi-PIE, the pose analyses) registers its evaluators when it is
imported, and `evaluators()` imports them all, so adding a benchmark is adding one module
there (and its test); `evaluate.py` only loops over the registry. A test or a user's script
may `register` an evaluator of its own (and `unregister` it).

An evaluator says
- `name`: its entry in config.eval.benchmarks;
- `paths`: the config.eval.paths options it reads, each with its default below the data
  set's own protocol folder (`data.protocol_root`; None: the data set has no such file);
- `checks(context)`: [(option names, function)], each function opening one input the way
  `run` reads it (run before training, so a bad file stops a run at its start);
- `run(context)`: {result name: figures}, usually {name: {...}}; figures the table prints
  are numbers or {label: number} dicts, with an optional `<figure>_ci` = [low, high] (or a
  {label: [low, high]} dict) beside each;
- `table_keys`: which figures the table prints (as %, except those in `plain_keys`);
- `runs_with`: for an analysis rather than a benchmark: it is not named in
  config.eval.benchmarks but runs once, after the benchmarks, whenever any benchmark named in
  `runs_with` is configured (the pose analyses run with CFP).
"""
import dataclasses
import importlib
import pkgutil
from typing import Callable, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class Context:
  """What an evaluator is given: the run's config, the resolved config.eval.paths, the
  data set's stored image size, the embedding function and the parsed-protocol cache.

  embed(paths) -> (N, D) embeddings of image files; embed.images(uint8 (N, S, S, 3)) of
  decoded images (S = stored_size); files.read(reader, *args) parses a protocol file once
  however many phases are evaluated. `embed` is None while checking.
  """
  config: object
  paths: Mapping[str, Optional[str]]
  stored_size: int
  embed: object = None
  files: object = None
  results: Mapping[str, dict] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Evaluator:
  name: str
  paths: Mapping[str, Optional[str]]
  run: Callable[[Context], dict]
  checks: Callable[[Context], list] = lambda context: []
  table_keys: tuple = ()
  plain_keys: tuple = ()
  runs_with: tuple = ()


_REGISTRY = {}
_BUILTIN_LOADED = False


def register(evaluator):
  """Adds `evaluator`; a second evaluator of the same name is an error (unregister first).
  Returns it, so a module may write `EVALUATOR = register(Evaluator(...))`."""
  if evaluator.name in _REGISTRY:
    raise ValueError(f"an evaluator named {evaluator.name!r} is registered already "
                     f"(by {_REGISTRY[evaluator.name].run.__module__})")
  for option, default in evaluator.paths.items():
    for other in _REGISTRY.values():
      if option in other.paths and other.paths[option] != default:
        raise ValueError(f"evaluator {evaluator.name!r} gives config.eval.paths.{option} the "
                         f"default {default!r}, {other.name!r} gives it {other.paths[option]!r}")
  _REGISTRY[evaluator.name] = evaluator
  return evaluator


def unregister(name):
  _REGISTRY.pop(name, None)


def _load_builtin():
  global _BUILTIN_LOADED
  if not _BUILTIN_LOADED:
    _BUILTIN_LOADED = True
    from aprn_jax.evaluation import benchmarks
    for module in pkgutil.iter_modules(benchmarks.__path__):
      if not module.name.startswith("_"):
        importlib.import_module(f"{benchmarks.__name__}.{module.name}")


def evaluators():
  """{name: Evaluator} of every registered evaluator, the built-in ones first."""
  _load_builtin()
  return dict(_REGISTRY)


def benchmark_names():
  """The names config.eval.benchmarks may hold (analyses run by themselves)."""
  return tuple(name for name, e in evaluators().items() if not e.runs_with)


def default_paths():
  """{config.eval.paths option: its default below the protocol folder}, over all evaluators."""
  paths = {}
  for evaluator in evaluators().values():
    paths.update(evaluator.paths)
  return paths


def selected(benchmarks):
  """The evaluators to run for config.eval.benchmarks, in order: the named benchmarks
  (each once), then the analyses that run with any of them."""
  registered = evaluators()
  names = list(dict.fromkeys(benchmarks))
  chosen = [registered[name] for name in names]
  chosen += [e for e in registered.values() if e.runs_with and set(e.runs_with) & set(names)]
  return chosen

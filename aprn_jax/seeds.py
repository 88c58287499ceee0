"""Every random stream of a run, derived from (seed, phase, purpose).

Streams are never made by adding integers (`seed + phase` would make seed s's APRN phase reuse
seed s + 1's baseline key): JAX keys are folded in, `jax.random.fold_in(fold_in(key(seed),
phase), purpose)`, and data orders use the fixed-length word tuple (seed, phase, purpose) as
`numpy.random.SeedSequence` entropy (`input_pipeline.preprocess.train_batches` appends the
epoch). Ids start at 1 and tuples have one length, so no two (seed, phase, purpose) share a
stream (SeedSequence ignores trailing zero words; `tests/test_seeds.py` checks seeds 0..9).
"""
import jax

PHASE_IDS = {"baseline": 1, "aprn": 2}
PURPOSE_IDS = {"init": 1, "data": 2}


def words(seed, phase, purpose):
  """(seed, phase id, purpose id): the entropy of one stream."""
  if not isinstance(seed, int) or seed < 0:
    raise ValueError(f"config.seed={seed!r} must be an integer >= 0")
  if phase not in PHASE_IDS:
    raise ValueError(f"phase {phase!r} has no seed stream; known: {tuple(PHASE_IDS)}")
  if purpose not in PURPOSE_IDS:
    raise ValueError(f"purpose {purpose!r} has no seed stream; known: {tuple(PURPOSE_IDS)}")
  return (seed, PHASE_IDS[phase], PURPOSE_IDS[purpose])


def key(seed, phase, purpose):
  """The JAX key of one stream."""
  seed, phase_id, purpose_id = words(seed, phase, purpose)
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), phase_id), purpose_id)


def data_seed(seed, phase):
  """The training data order and augmentation of a phase (`preprocess.train_batches`)."""
  return words(seed, phase, "data")

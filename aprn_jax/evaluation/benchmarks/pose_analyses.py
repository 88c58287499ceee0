"""The paper's embedding-level pose analyses on CFP: the frontal-vs-profile SVM and the
centroid distance (runs with cfp_ff or cfp_fp; results under `pose_analyses`).

The SVM is trained on the paper's 5000 / 2000 split of CFP's 7000 images (scaled down for
smaller sets); its validation accuracy's interval is Wilson's.
"""
import os

import numpy as np

from aprn_jax.analysis import embedding_analyses
from aprn_jax.evaluation import intervals, registry
from aprn_jax.evaluation.benchmarks import cfp as cfp_family
from input_pipeline.readers import cfp


def pose_analyses(embed, files, root):
  pairs = files.read(cfp.read_cfp, root, "FP")
  emb = embed(pairs.paths)
  is_profile = np.array(["/profile/" in p.replace(os.sep, "/") for p in pairs.paths])
  identity = np.array([cfp_family.person(p) for p in pairs.paths])
  num_train = min(5000, len(emb) * 5 // 7)
  train_idx, test_idx = embedding_analyses.sample_train_test(
      len(emb), num_train=num_train, num_test=min(2000, len(emb) - num_train))
  svm = embedding_analyses.pose_svm(emb, is_profile, train_idx, test_idx)
  correct = int(round(svm["val_accuracy"] * len(test_idx)))
  mean, std = embedding_analyses.centroid_distance(emb, np.unique(identity,
                                                                  return_inverse=True)[1])
  return {"pose_svm_train_accuracy": svm["train_accuracy"],
          "pose_svm_val_accuracy": svm["val_accuracy"],
          "pose_svm_val_accuracy_ci": list(intervals.wilson(correct, len(test_idx))),
          "centroid_distance_mean": mean, "centroid_distance_std": std}


def run(context):
  return {"pose_analyses": pose_analyses(context.embed, context.files, context.paths["cfp"])}


def checks(context):  # FP's list, also when only cfp_ff is configured
  return cfp_family.FP.checks(context)


EVALUATOR = registry.register(registry.Evaluator(
    name="pose_analyses", paths=cfp_family.PATHS, run=run, checks=checks,
    table_keys=("pose_svm_train_accuracy", "pose_svm_val_accuracy", "centroid_distance_mean"),
    plain_keys=("centroid_distance_mean",), runs_with=("cfp_ff", "cfp_fp")))

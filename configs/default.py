"""Default: the built-in synthetic faces, a CPU-sized ResNet, baseline then APRN.

    python main.py --config=configs/default.py --workdir=/tmp/aprn_default

Finishes on 2 CPU cores in 4.5 to 14 minutes including data generation and evaluation (2 Intel
Xeon cores with the oneDNN layers: data 1.1 min, baseline 1.2, APRN 0.4, evaluation 0.8; a
quiet AMD EPYC with XLA's own layers: 5 min; another, earlier: 14 min),
then prints baseline vs APRN on the synthetic copies of CFP-FF/FP, IJB-A, MegaFace and
per-yaw Multi-PIE, every figure with its 95% interval. Every other config starts from this one
and overrides what differs; any field can also be overridden on the command line, e.g.
`--config.aprn.alpha=0.3`.

Why these settings (measured on 2 AMD EPYC cores; README "Results"):
- Test set: the synthetic faces' `default` build, 990 test people, so CFP-FP accuracy's 95%
  interval is +-0.5 to 0.6 points (650 people gave +-1.0 to 1.3). One ray per pixel: 147
  images/s rendered against 105 with 2x2 rays per pixel.
- Baseline: 14 epochs, LR 0.1 decayed 10x after epochs 10 and 13: 80% training accuracy at
  the end (8 epochs without decay ended at 34%) and CFP-FP 8.9 points below CFP-FF, so pose
  is the nuisance it is in real data. Softmax: CosFace (s 30, m 0.35) and ArcFace (s 32,
  m 0.5) trained from scratch on these 6,000 images stayed at 1 to 5% training accuracy.
- APRN: 2 epochs at a 10x smaller LR, D on stage4 after 100 warm-up steps (D's L1 over the
  mean face's: 1.006 at step 1, 0.415 at the end of the warm-up).
- alpha 0.2, the paper's best value (Table 11), kept because tuning could not tell the
  values apart: `python -m aprn_jax.experiments --config=configs/default.py
  --experiment=alpha --seeds=3 --split=validation "--config.eval.benchmarks=('cfp_ff',
  'cfp_fp')"` (500 validation people) gave CFP-FP minus
  the control, paired by seed, of +0.07 +- 0.30 (alpha 0.1), -0.06 +- 0.59 (0.2), -0.03 +-
  0.29 (0.3) and -0.00 +- 0.33 (0.4) points: no value differs from the control or from
  another (README, "The paper's claims on the built-in benchmark").
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(
      name="synthetic_faces",     # or your own faces: face_folder | insightface_rec
      builder_config="default",   # synthetic_faces: tiny / default / large
      data_dir="",                # TFDS data dir; "" = <workdir>/../data shared by runs
      # face_folder / insightface_rec (input_pipeline/real): built offline from manual_dir.
      manual_dir="",              # <identity>/<image> folders, or train.rec + train.idx;
                                  # with landmarks.csv (input_pipeline/real/tables.py)
      stored_size=112,            # images stored at this side (centre square, resized)
      skip_bad=False,             # skip bad images (listed in skipped.txt) instead of failing
      image_size=64,              # network input
      crop_size=64,               # random crop from the stored image (72x72 here)
      mean_face_max_yaw=10.0,     # frontal images (|yaw| below this) make the mean face
  )

  config.model = dict(
      backbone="resnet",          # resnet | casia_net (models.BACKBONES)
      depth=50,                   # resnet: ignored when stage_sizes is set
      stage_sizes=(1, 1, 1, 1),   # resnet: a CPU-sized bottleneck ResNet
      width=16,                   # resnet: stage1's bottleneck width
      block_widths=(),            # casia_net: ((w, w), ...) per block; () = the paper's
      embedding_dim=128,          # casia_net: its last convolution's width
      head="softmax",             # softmax | cosface | arcface | combined
      s=64.0, m=0.5, m1=1.0, m2=0.0, m3=0.0,
      # dense: the head's classes on every device. sharded: split over the devices, softmax
      # normalised across them (aprn_jax/models/partial_fc.py); for 100k+ identities.
      classifier="dense",
      sample_rate=1.0,            # sharded: share of each device's classes kept per step
                                  # (positives always kept); 1.0 = no sampling
      dtype="float32",            # bfloat16 on GPUs/TPUs: activations only
      # fast: on CPU oneDNN's convolutions and pools (XLA's forms where oneDNN is missing),
      # flax's elsewhere; xla: XLA:CPU's fastest own forms; flax: flax's everywhere;
      # portable: flax's with an explicit-pad max-pool (ONNX export). models/layers.py.
      layer_forms="fast",
  )

  # The APRN module: D on one tap of R, trained by the adversarial regression loss.
  config.aprn = dict(
      tap="stage4",               # resnet: stem, stage1..4; casia_net: block1..5, last_conv
      loss="adversarial",         # adversarial | l1_reg | l2_reg | none | reference_code
      alpha=0.2,
      d_period=1,                 # the public code updates D and R' every 2nd step
      adv_period=1,
      # () = Table 1 / Table 4 widths for the tap. Here D's Conv3x3 is 128 wide, not as wide
      # as the 512-channel tap: this R is 4 blocks deep, not 33, so a Table 1 D would have 3x
      # the backbone's parameters and half R's training FLOPs; 128 gives 0.8x and 12%
      # (ResNet-101's Table 1 D: 0.6x and 20%).
      d_widths=(128,),
      d_pool="table",             # D's 3x3/2 max-pool: table (Table 1 yes, Table 4 no) | max | none
      # D's warm-up: the APRN phase's first steps train D alone on the frozen baseline, so R
      # is trained against a D that beats the constant mean-face answer.
      d_warmup_steps=100,
      # D's own optimizer (sgd | adam), independent of R's; epochs count D's updates. D's
      # gradient is alpha * dL1/dD as in Eq. 2, so its SGD step is alpha * lr.
      d_optim=dict(name="sgd", lr=1.0, momentum=0.9, weight_decay=5e-4, lr_decay=0.1,
                   lr_decay_epochs=()),
  )

  # R's optimizer (backbone + head): SGD, piecewise-constant LR by epoch; the APRN phase
  # scales its LR by config.train.aprn_lr_scale.
  config.optim = dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, lr_decay=0.1,
                      lr_decay_epochs=(10, 13))

  config.train = dict(
      phases=("baseline", "aprn"),  # either alone, or both in order
      batch_size=128,               # global, over all devices and hosts
      baseline_epochs=14,
      aprn_epochs=2,
      aprn_lr_scale=0.1,            # APRN fine-tunes the baseline at a 10x smaller LR
      log_every_steps=10,
      checkpoint_every_steps=100,
      keep_checkpoints=2,
      # Every cross-device sum (gradients, BatchNorm statistics, metrics, the sharded
      # classifier's softmax) as an all-gather added in device order: the same floats for
      # any split of the devices over processes, at devices / 2 times an all-reduce's bytes
      # and devices times the gradients' memory while they are added.
      ordered_reductions=False,
  )

  # Benchmarks and where their files are (aprn_jax/evaluate.py); an empty path means the data
  # set's own protocol files (the synthetic faces ship all of them in the real layouts).
  config.eval = dict(
      # The synthetic faces' identities to evaluate on: test (report) or validation (tune);
      # for other data sets config.eval.paths names the files.
      split="test",
      # lfw and bins are left out here: on the synthetic faces they hold CFP's pairs in those
      # layouts and give CFP's figures exactly (tests/test_end_to_end.py).
      benchmarks=("cfp_ff", "cfp_fp", "ijba", "megaface", "multipie"),
      bins=("cfp_ff", "cfp_fp"),  # insightface packs <paths.bins>/<name>.bin
      paths=dict(cfp="", lfw="", lfw_images="", bins="", ijba="", ijba_images="", ijbb="",
                 ijbc="", megaface_probes="", megaface_probe_images="",
                 megaface_distractors="", megaface_distractor_images="", multipie=""),
      batch_size=128,
      flip=True,
  )

  # --mode=analyse: the paper's pose-invariance analyses on the saved checkpoints (see
  # aprn_jax/analysis/analyse.py), about 1 minute on 2 CPU cores, most of it the
  # probes. Like config.eval, it may change in an existing workdir.
  config.analysis = dict(
      probe_taps=(),              # Table 3 landmark probes; () = every tap of the backbone
      probe_train_images=2000,    # the first images of the training split
      probe_steps=300,            # Adam steps of every probe, all taps together
      probe_batch_size=64,
      probe_lr=1e-3,
      tsne_identities=10,         # Fig. 2
      overlay_identities=2,       # Fig. 1: a frontal and a profile CFP image of each
      overlay_tile=192,           # pixels per image in the overlay PNG
      noise_images=100,           # the noise test (paper: 100 images, uniform in [-1, 1])
      seed=0,
  )
  return config

"""ResNet-101 + Softmax on MS-Celeb-1M, the paper's setting (Table 1, 9; section 1 of the docs).

    python main.py --config=configs/resnet101.py --workdir=/ckpt/r101 \
        --config.data.name=insightface_rec --config.data.manual_dir=/data/faces_emore \
        --config.data.stored_size=230 --config.data.data_dir=/data/tfds

(manual_dir: insightface's train.rec + train.idx with a landmarks.csv, README "Your own
faces"). Aligned faces stored at 230x230, random 224x224 crops, 20 epochs at LR 0.01 decayed
10x at epochs 16, 18, 19 (baseline); APRN then fine-tunes from the baseline at a 10x smaller LR
with alpha 0.2 and D on stage4. 256-d embedding. bfloat16 activations (float32 parameters and
losses).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.update(builder_config="large", image_size=224, crop_size=224)
  config.model.update(backbone="resnet", depth=101, stage_sizes=(), width=64,
                      embedding_dim=256, head="softmax", dtype="bfloat16")
  config.aprn.update(tap="stage4", alpha=0.2, d_widths=())  # Table 1: D as wide as the tap
  # D: SGD on the fine-tune's schedule as the public code (no warm-up in the paper's recipe).
  config.aprn.update(d_warmup_steps=0, d_optim=dict(name="sgd", lr=0.001, momentum=0.9,
                                                    weight_decay=5e-4, lr_decay=0.1,
                                                    lr_decay_epochs=(16, 18, 19)))
  config.optim.update(lr=0.01, lr_decay_epochs=(16, 18, 19))
  config.train.update(batch_size=256, baseline_epochs=20, aprn_epochs=20,
                      log_every_steps=100, checkpoint_every_steps=5000, keep_checkpoints=3)
  config.eval.update(batch_size=256)
  return config

"""CASIA-Net + Softmax on CASIA-WebFace, the paper's CFP setting (Tables 4, 5).

    python main.py --config=configs/casia_net.py --workdir=/ckpt/casia \
        --config.data.name=face_folder --config.data.manual_dir=/data/CASIA-WebFace \
        --config.data.stored_size=100 --config.data.data_dir=/data/tfds

(manual_dir: one folder per identity with a landmarks.csv, README "Your own faces").
Aligned 100x100 faces, random 96x96 crops, 30 epochs at LR 0.1 decayed 10x at epochs 20, 27,
29; APRN (Table 4 discriminator on the last conv layer, alpha 0.2) fine-tunes from the baseline
at a 10x smaller LR. On the synthetic data (the default data) it runs as is at 96x96.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.update(image_size=96, crop_size=96)
  config.model.update(backbone="casia_net", embedding_dim=320, head="softmax")
  config.aprn.update(tap="last_conv", alpha=0.2, d_widths=())  # Table 4: 3 x Conv3x3x320
  # D: SGD on the fine-tune's schedule as the public code (no warm-up in the paper's recipe).
  config.aprn.update(d_warmup_steps=0, d_optim=dict(name="sgd", lr=0.01, momentum=0.9,
                                                    weight_decay=5e-4, lr_decay=0.1,
                                                    lr_decay_epochs=(20, 27, 29)))
  config.optim.update(lr=0.1, lr_decay_epochs=(20, 27, 29))
  config.train.update(batch_size=256, baseline_epochs=30, aprn_epochs=30,
                      log_every_steps=100, checkpoint_every_steps=2000)
  return config

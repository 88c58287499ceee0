"""ResNet-101 + ArcFace on WebFace42M (2 million identities) in insightface's packed format.

    python main.py --config=configs/webface.py --workdir=/ckpt/webface \
        --config.data.manual_dir=/data/webface42m --config.data.data_dir=/data/tfds \
        --config.eval.paths.bins=/data/faces_emore

manual_dir holds train.rec, train.idx and landmarks.csv, as for configs/ms1m.py, whose
settings this config keeps (112x112 aligned faces, ArcFace s 64 m 0.5, 512-d, evaluated on
the lfw, cfp_fp and agedb_30 .bin packs). With 2M identities the classifier is 1 billion
parameters: it is split over the devices and each step keeps 0.3 of every device's classes
(Partial FC, An et al. CVPR 2022: every positive of the global batch plus random negatives;
aprn_jax/models/partial_fc.py). Global batch 1024: 128 images on each of 8 devices.
"""
from configs import ms1m


def get_config():
  config = ms1m.get_config()
  config.model.update(classifier="sharded", sample_rate=0.3)
  config.train.update(batch_size=1024)
  config.eval.update(batch_size=1024)
  return config

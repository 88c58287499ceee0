"""ResNet-101 + ArcFace on insightface's packed MS1M (train.rec + train.idx) at 112x112.

    python main.py --config=configs/ms1m.py --workdir=/ckpt/ms1m \
        --config.data.manual_dir=/data/faces_emore --config.data.data_dir=/data/tfds \
        --config.eval.paths.bins=/data/faces_emore

manual_dir holds train.rec, train.idx and the landmark table landmarks.csv
(`<record index>,x1,y1,...,x51,y51`; input_pipeline/real/tables.py). The 112x112 aligned
faces are the network input whole (no random crop; mirror only). As resnet101.py otherwise,
with insightface's ArcFace (s 64, m 0.5) and a 512-d embedding; evaluated on the lfw,
cfp_fp and agedb_30 .bin packs that ship beside train.rec. The 85,742 identities of
faces_emore (512 x 85,742 = 44M centres) are split over the devices without sampling
(`classifier=sharded`, sample_rate 1.0: the dense head's update, 1/N of its memory per
device; README "Your own faces").
"""
from configs import resnet101


def get_config():
  config = resnet101.get_config()
  config.data.update(name="insightface_rec", stored_size=112, image_size=112, crop_size=112)
  config.model.update(embedding_dim=512, head="arcface", s=64.0, m=0.5, classifier="sharded",
                      sample_rate=1.0)
  config.eval.update(benchmarks=("bins",), bins=("lfw", "cfp_fp", "agedb_30"))
  return config

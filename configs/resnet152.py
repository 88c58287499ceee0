"""ResNet-152 + ArcFace (s=32, m=0.5) on MS-Celeb-1M, the paper's MegaFace setting (Table 8).

    python main.py --config=configs/resnet152.py --workdir=/ckpt/r152 \
        --config.data.name=insightface_rec --config.data.data_dir=/data/tfds

As resnet101.py but 152 layers, ArcFace and a 512-d embedding.
"""
from configs import resnet101


def get_config():
  config = resnet101.get_config()
  config.model.update(depth=152, embedding_dim=512, head="arcface", s=32.0, m=0.5)
  return config

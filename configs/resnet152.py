"""ResNet-152 + ArcFace (s=32, m=0.5) on MS-Celeb-1M, the paper's MegaFace setting (Table 8).

    python main.py --config=configs/resnet152.py --workdir=/ckpt/r152 \
        --config.data.name=insightface_rec --config.data.manual_dir=/data/faces_emore \
        --config.data.stored_size=230 --config.data.data_dir=/data/tfds \
        "--config.eval.benchmarks=('megaface',)" \
        --config.eval.paths.megaface_probes=/data/megaface/facescrub_features_list.json \
        --config.eval.paths.megaface_probe_images=/data/megaface/facescrub_images \
        --config.eval.paths.megaface_distractors=/data/megaface/megaface_features_list.json_1000000_1 \
        --config.eval.paths.megaface_distractor_images=/data/megaface/megaface_images

As resnet101.py but 152 layers, ArcFace and a 512-d embedding.
"""
from configs import resnet101


def get_config():
  config = resnet101.get_config()
  config.model.update(depth=152, embedding_dim=512, head="arcface", s=32.0, m=0.5)
  return config

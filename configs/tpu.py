"""ResNet-101 on a Colab TPU (v2-8 / v3-8: 8 cores), bfloat16, cross-core BatchNorm.

    python main.py --config=configs/tpu.py --workdir=gs://bucket/r101 \
        --config.data.data_dir=gs://bucket/tfds

The same step as every other config: pmapped over the 8 TPU cores with BatchNorm statistics
synchronised across them. The global batch must divide by the core count.
"""
from configs import resnet101


def get_config():
  config = resnet101.get_config()
  config.model.dtype = "bfloat16"
  config.train.batch_size = 512
  config.eval.batch_size = 512
  return config

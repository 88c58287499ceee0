"""Real face data: TFDS builders that read the user's own folders offline.

Two layouts of a manual folder (`config.data.manual_dir`), each with a landmark side table
(`tables`: `landmarks.csv`, or `landmarks.npy` + `landmarks_keys.txt`):

- `face_folder` (`builders.FaceFolder`): `<manual_dir>/<identity>/<image>`, one folder per
  person, images in any format Pillow reads; table keys are paths relative to manual_dir.
- `insightface_rec` (`builders.InsightfaceRec`): insightface's `<manual_dir>/train.rec` and
  `train.idx` (`input_pipeline.recordio`); table keys are record indices.

`aprn_jax.data.load` builds them when `config.data.name` names one.
"""

"""Renders one synthetic identity across yaw -90..90 with its 51 landmarks drawn, as a PNG.

    python -m input_pipeline.synthetic.contact_sheet --out sheet.png [--seed N --size 112]

Top row: the plain renders; bottom row: the same with the landmarks, visible points green and
self-occluded points red. The views use a frontal light and no pose jitter besides the yaw.
"""
import argparse
import os

from PIL import Image, ImageDraw

from input_pipeline import files
from input_pipeline.synthetic import faces, renderer

YAWS = tuple(range(-90, 91, 15))
_VISIBLE = (0, 230, 0)
_HIDDEN = (255, 40, 40)


def contact_sheet(seed, size, yaws=YAWS):
  """The sheet as a PIL image: two rows of `len(yaws)` renders of `size` pixels."""
  head = faces.build_head(faces.sample_identity(seed))
  sheet = Image.new("RGB", (size * len(yaws), 2 * size))
  for column, yaw in enumerate(yaws):
    view = renderer.View(yaw=yaw, pitch=0.0, roll=0.0,
                         light_dir=tuple(renderer.light_direction(-20.0, 20.0)),
                         background_seed=seed)
    image, points, visible = renderer.render(head, view, size)
    plain = Image.fromarray(image)
    sheet.paste(plain, (column * size, 0))
    draw = ImageDraw.Draw(plain)
    radius = max(size / 112, 0.5)
    for (x, y), shown in zip(points, visible):
      draw.ellipse((x - radius, y - radius, x + radius, y + radius),
                   fill=_VISIBLE if shown else _HIDDEN)
    sheet.paste(plain, (column * size, size))
  return sheet


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="PNG file to write")
  parser.add_argument("--seed", type=int, default=0, help="identity seed")
  parser.add_argument("--size", type=int, default=112, help="pixels per image")
  args = parser.parse_args(argv)
  if args.size < 16:
    raise ValueError(f"--size must be at least 16, got {args.size}")
  image_format = Image.registered_extensions().get(os.path.splitext(args.out)[1].lower())
  with files.open(args.out, "wb") as f:  # the format from the extension, as save(path) does
    contact_sheet(args.seed, args.size).save(f, format=image_format)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

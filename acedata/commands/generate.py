"""`acedata generate CHECKPOINT --image IMG --instruction TEXT --out OUT.png`: sample an edit."""

from __future__ import annotations

import argparse
import io
import os

from acedata import storage
from acedata.errors import UserError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="edit / generate an image with a trained ACE checkpoint",
        description="Sample from an ACE DiT checkpoint (a checkpoint dir or a training run dir) with DDIM "
        "(trailing spacing) and classifier-free guidance with guidance rescale. Refer to inputs in the "
        "instruction as {image} (one input) or {image1}, {image2} ... Without --image: text-to-image.",
    )
    p.add_argument("checkpoint")
    p.add_argument("--instruction", required=True)
    p.add_argument("--image", action="append", default=[], help="input image (repeat for several)")
    p.add_argument("--mask", action="append", default=[], help="mask for the i-th --image (white = edit)")
    p.add_argument("--history", nargs=2, action="append", default=[], metavar=("INSTRUCTION", "IMAGE"),
                   help="an earlier turn: its instruction and input image (repeat, oldest first)")
    p.add_argument("--out", default="generated.png")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--rescale", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.set_defaults(func=run)


def _open(path: str, mode: str = "RGB"):
    from PIL import Image

    if not storage.is_file(path):
        raise UserError(f"image {path!r} not found")
    try:
        return Image.open(io.BytesIO(storage.read_bytes(path))).convert(mode)
    except OSError as e:
        raise UserError(f"cannot read image {path!r}: {e}") from None


def run(args: argparse.Namespace) -> int:
    from acemodel.sample import Generator
    from PIL import Image

    fmt = Image.registered_extensions().get(os.path.splitext(args.out)[1].lower())
    if fmt is None:
        raise UserError(f"--out {args.out!r}: unknown image extension (use .png, .jpg, .webp ...)")
    if len(args.mask) > len(args.image):
        raise UserError("more --mask than --image arguments")
    images = [_open(p) for p in args.image]
    masks = [_open(p, "L") for p in args.mask] + [None] * (len(images) - len(args.mask))
    history = [(instr, [_open(img)]) for instr, img in args.history]
    size = (args.width, args.height) if args.width and args.height else None
    if size is None and not images:
        size = (512, 512)
    gen = Generator.load(args.checkpoint, device=args.device, use_ema=not args.no_ema)
    out = gen(args.instruction, images, masks, history, size=size, steps=args.steps, guidance=args.guidance,
              rescale=args.rescale, seed=args.seed)
    buf = io.BytesIO()
    out.save(buf, format=fmt)
    storage.write_bytes(storage.absolute(args.out), buf.getvalue())  # a local path or a URI
    print(f"wrote {args.out} ({out.width}x{out.height}) from {gen.checkpoint}")
    return 0

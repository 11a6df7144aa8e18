"""An offline demo corpus built from the real photographs that ship in installed packages.

Each base photograph (scikit-image's `data` folder, scikit-learn's sample images)
becomes a group of variants — crops, flips, rescales, colour jitter, small rotations —
saved as `DIR/<group>/<group>_<k>.jpg` with a sidecar `.json` holding the group and a
caption. The group is the ground truth for pairing tests. `DIR/odd/` holds the kinds
of bad and odd input ingest must survive.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random

import numpy as np
from PIL import Image, ImageEnhance

CAPTIONS = {
    "astronaut": "a portrait of an astronaut in a white spacesuit in front of a flag",
    "coffee": "a cup of coffee on a saucer seen from above",
    "chelsea": "a ginger tabby cat looking to the side",
    "rocket": "a rocket on a launch pad under a blue sky",
    "motorcycle_left": "a red motorcycle parked in a workshop",
    "motorcycle_right": "a red motorcycle parked in a workshop",
    "china": "a traditional chinese temple with a curved roof among trees",
    "flower": "a pink flower in close-up with blurred leaves behind",
    "hubble_deep_field": "a field of distant galaxies in deep space",
    "retina": "a medical photograph of a human retina",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "ihc": "a stained tissue sample under a microscope",
    "color": "a chart of colour gradients",
    "logo": "a colourful logo on a white background",
    "horse": "a silhouette of a horse",
    "cat": "a ginger tabby cat looking to the side",
}


def base_images(min_side: int = 128) -> list[tuple[str, Image.Image]]:
    """Real RGB photographs shipped by scikit-image and scikit-learn."""
    import skimage
    import sklearn

    paths = glob.glob(os.path.join(os.path.dirname(skimage.__file__), "data", "*"))
    paths += glob.glob(os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", "*.jpg"))
    out = []
    for p in sorted(paths):
        name = os.path.splitext(os.path.basename(p))[0]
        if not p.lower().endswith((".png", ".jpg", ".jpeg")):
            continue
        try:
            im = Image.open(p)
            im.load()
        except OSError:
            continue
        if im.mode not in ("RGB", "RGBA") or min(im.size) < min_side:
            continue
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
        if arr.std(axis=2).mean() < 4:  # effectively grayscale: drop
            continue
        out.append((name, im.convert("RGB")))
    if not out:
        raise RuntimeError("no sample photographs found in scikit-image / scikit-learn installs")
    return out


def variant(im: Image.Image, rng: random.Random, k: int) -> Image.Image:
    if k == 0:
        return im.copy()
    w, h = im.size
    out = im
    scale = rng.uniform(0.72, 0.92)
    cw, ch = int(w * scale), int(h * scale)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = out.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        s = rng.uniform(0.6, 0.9)
        out = out.resize((max(64, int(out.width * s)), max(64, int(out.height * s))), Image.Resampling.BICUBIC)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.85, 1.15))
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.8, 1.2))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.85, 1.15))
    if rng.random() < 0.3:
        out = out.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BICUBIC, expand=False)
    return out


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=kw.pop("quality", 92), **kw)
    return buf.getvalue()


def write_odd_inputs(d: str, sample: Image.Image) -> dict[str, str]:
    """Bad and odd inputs, with what ingest should make of each."""
    os.makedirs(d, exist_ok=True)
    small = sample.resize((160, 120))
    good = _jpeg(small)
    expect = {}

    def put(name: str, data: bytes, outcome: str) -> None:
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        expect[name] = outcome

    put("truncated.jpg", good[: len(good) // 2], "truncated")
    put("not_an_image.jpg", b"this is a text file, not a JPEG\n" * 4, "not_an_image")
    put("empty.png", b"", "empty")
    buf = io.BytesIO()
    small.save(buf, "PNG")
    put("png_named_as.jpg", buf.getvalue(), "image")
    put("tiny.jpg", _jpeg(sample.resize((12, 12))), "too_small")
    put("too_wide.jpg", _jpeg(sample.resize((900, 60))), "bad_aspect")
    put("cmyk.jpg", _jpeg(small.convert("CMYK")), "image")
    rgba = small.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(small.size))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    put("alpha.png", buf.getvalue(), "image")
    buf = io.BytesIO()
    small.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, "PNG", transparency=0)
    put("palette.png", buf.getvalue(), "image")
    a16 = (np.asarray(small.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a16).save(buf, "PNG")
    put("sixteen_bit.png", buf.getvalue(), "image")
    buf = io.BytesIO()
    frames = [small.rotate(a) for a in (5, 10, 20)]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    put("animated.gif", buf.getvalue(), "image")
    # A 20000 x 20000 PNG header: far over the pixel bound, refused before decoding.
    bomb = Image.new("1", (20000, 20000))
    buf = io.BytesIO()
    bomb.save(buf, "PNG")
    put("bomb.png", buf.getvalue(), "too_many_pixels")
    exif_img = small.copy()
    ex = exif_img.getexif()
    ex[0x0112] = 6  # orientation: rotate 90 on display
    buf = io.BytesIO()
    exif_img.save(buf, "JPEG", exif=ex.tobytes())
    put("exif_rotated.jpg", buf.getvalue(), "image")
    target = os.path.join(d, "png_named_as.jpg")
    link = os.path.join(d, "link.jpg")
    if not os.path.lexists(link):
        os.symlink(target, link)
    expect["link.jpg"] = "symlink"
    return expect


def build(out: str, variants: int = 8, seed: int = 0, max_side: int = 384, odd: bool = True) -> dict:
    """Write the corpus; returns a summary (groups, image count, odd-input expectations)."""
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    groups: dict[str, int] = {}
    for name, im in base_images():
        if max(im.size) > max_side:
            s = max_side / max(im.size)
            im = im.resize((int(im.width * s), int(im.height * s)), Image.Resampling.LANCZOS)
        gdir = os.path.join(out, name)
        os.makedirs(gdir, exist_ok=True)
        for k in range(variants):
            v = variant(im, rng, k)
            stem = os.path.join(gdir, f"{name}_{k}")
            v.save(stem + ".jpg", "JPEG", quality=92)
            caption = CAPTIONS.get(name, name.replace("_", " "))
            with open(stem + ".json", "w") as f:
                json.dump({"group": name, "caption": caption, "license": "see package"}, f)
        groups[name] = variants
    summary = {"groups": groups, "images": sum(groups.values())}
    if odd:
        summary["odd"] = write_odd_inputs(os.path.join(out, "odd"), base_images()[0][1])
    with open(os.path.join(out, ".corpus.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary

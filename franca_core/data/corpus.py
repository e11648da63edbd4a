"""A LAION-style web corpus made on this machine: the embedded default source of the pipeline.

``synthetic_corpus`` renders images with ``synthetic.render_image`` in the configured ``style`` (one class per image:
an object shape, or with ``textures`` a whole-image pattern; labels and masks kept aside in ``annotations``) and
plants the faults of a real crawl, each recorded in the ``fault`` column of ``annotations`` so tests can score the
data stage:

- ``exact_duplicate``: the same bytes under another URL; ``near_duplicate``: re-encoded (JPEG q 40-70), resized
  (x0.6-0.85 or x1.2-1.6) or slightly cropped (2-5 %, resized back) copies; ``contaminated``: such copies of
  images of an evaluation set (``contaminate_from``);
- ``dead_url`` (no file: HTTP 404), ``corrupt`` (JPEG header + garbage), ``non_image`` (an HTML page),
  ``decompression_bomb`` (a 17 KB 1-bit PNG declaring 12000 x 12000 pixels);
- ``filtered``: good images whose metadata fails one select filter (similarity, punsafe, pwatermark, size, aspect).

``image_set_corpus`` wraps any labelled image list (a ../shared/data Parquet, an image folder) the same way,
without planted faults. URLs are ``PLACEHOLDER`` + the file's path relative to the corpus folder: the download stage
serves that folder on 127.0.0.1 and rewrites the host, so the metadata (and its digest) does not depend on a port.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from franca_core.config import SyntheticSourceConfig
from franca_core.data.synthetic import SHAPES, TEXTURES, render_image

PLACEHOLDER = "http://corpus.invalid/"  # RFC 2606 reserved name: never resolvable, always rewritten before use
WWW = "www"  # the served sub-folder of a corpus folder
FAULTS = ("unique", "exact_duplicate", "near_duplicate", "contaminated", "dead_url", "corrupt", "non_image",
          "decompression_bomb", "filtered")
FILTER_FAULTS = ("similarity", "punsafe", "pwatermark", "min_size", "aspect")
_ADJ = ("a photo of a", "a small", "a large", "a bright", "a textured", "a striped", "an image of a", "a close-up of a")
_SCENE = ("on a plain background", "in a scene", "with clutter", "on a gradient", "outdoors", "on a pattern")


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """RGB image -> JPEG bytes."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


def png(array: np.ndarray) -> bytes:
    """uint8 ``(H, W)`` mask -> PNG bytes (mode L)."""
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def near_duplicate(img: Image.Image, rng: np.random.Generator) -> tuple[bytes, str]:
    """A degraded copy: re-encoded, resized or slightly cropped; returns (JPEG bytes, kind)."""
    w, h = img.size
    kind = ("reencode", "resize", "crop")[int(rng.integers(3))]
    if kind == "reencode":
        return jpeg(img, int(rng.integers(40, 71))), kind
    if kind == "resize":
        scale = rng.uniform(0.6, 0.85) if rng.random() < 0.5 else rng.uniform(1.2, 1.6)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        return jpeg(img.resize(size, Image.Resampling.BICUBIC), 85), kind
    frac = rng.uniform(0.02, 0.05)
    dx, dy = max(1, round(w * frac)), max(1, round(h * frac))
    x0, y0 = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    box = (x0, y0, w - (dx - x0), h - (dy - y0))
    return jpeg(img.crop(box).resize((w, h), Image.Resampling.BICUBIC), 88), kind


def corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """Keep the JPEG's first 20 bytes (SOI + APP0: it still looks like a JPEG) and garble the rest."""
    return data[:20] + rng.integers(0, 256, max(len(data) - 20, 64), dtype=np.uint8).tobytes()


def bomb_png(side: int = 12000) -> bytes:
    """A valid 1-bit greyscale PNG of ``side x side`` zeros: ~17 KB on the wire, 144 Mpx when decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    rows = (b"\x00" * (1 + (side + 7) // 8)) * side  # filter byte 0 + packed bits, all black
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def html_page(rng: np.random.Generator) -> bytes:
    """What a dead image link often serves instead: an HTML page with status 200."""
    return (f"<!DOCTYPE html><html><head><title>Page moved</title></head><body><p>Error "
            f"{int(rng.integers(1000, 9999))}: the image you requested is no longer here.</p></body></html>").encode()


@dataclass
class Corpus:
    """Files to serve (path relative to the corpus folder -> body), LAION metadata and annotations kept aside."""

    files: dict[str, bytes]
    metadata: pa.Table
    annotations: pa.Table


@dataclass
class _Entry:
    fault: str
    body: bytes | None  # None: nothing is served (dead URL)
    size: tuple[int, int]
    ext: str = "jpg"
    label: int = -1
    mask: np.ndarray | None = None
    source: int = -1  # index of the entry this one duplicates
    origin: str = ""  # key in the image set it comes from (contaminated copies, image-set corpora)
    meta: dict[str, float] = field(default_factory=dict)


def _good_meta(rng: np.random.Generator) -> dict[str, float]:
    return {"similarity": rng.uniform(0.3, 0.45), "punsafe": rng.uniform(0.0, 0.3),
            "pwatermark": rng.uniform(0.0, 0.6), "aesthetic": rng.uniform(4.0, 7.0)}


def _filtered(rng: np.random.Generator, rule: str, size: int, style: str) -> _Entry:
    """A good image whose metadata (or size) fails ``rule``."""
    img, mask, label = render_image(rng, 24 if rule == "min_size" else size, style=style)
    if rule == "aspect":
        img, mask = img.crop((0, 0, size, max(1, size // 4))), mask[: max(1, size // 4)]
    meta = _good_meta(rng)
    bad = {"similarity": ("similarity", rng.uniform(0.05, 0.25)), "punsafe": ("punsafe", rng.uniform(0.6, 0.99)),
           "pwatermark": ("pwatermark", rng.uniform(0.85, 0.99))}.get(rule)
    if bad:
        meta[bad[0]] = bad[1]
    return _Entry("filtered", jpeg(img), img.size, label=label, mask=mask, meta=meta)


def _contaminant(key: str, data: bytes, rng: np.random.Generator) -> _Entry:
    """A copy of an evaluation image: as is, re-encoded, or resized and re-encoded."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    kind = int(rng.integers(3))
    if kind == 1:
        body = jpeg(img, int(rng.integers(50, 86)))
    elif kind == 2:
        scale = rng.uniform(0.75, 1.5)
        size = (max(8, round(img.width * scale)), max(8, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
        body = jpeg(img, 85)
    else:
        body = data
    return _Entry("contaminated", body, img.size, origin=key)


def synthetic_corpus(cfg: SyntheticSourceConfig, contaminants: Sequence[tuple[str, bytes]] = ()) -> Corpus:
    """Render ``cfg.n_images`` rows (planted faults included) deterministically from ``cfg.seed``."""
    rng, n, size = np.random.default_rng(cfg.seed), cfg.n_images, cfg.image_size
    classes = TEXTURES if cfg.style == "textures" else SHAPES
    count = {"exact_duplicate": cfg.exact_dup_rate, "near_duplicate": cfg.near_dup_rate, "dead_url": cfg.dead_url_rate,
             "corrupt": cfg.corrupt_rate, "non_image": cfg.non_image_rate, "filtered": cfg.filtered_rate}
    planted = {k: int(round(rate * n)) for k, rate in count.items()}
    planted["decompression_bomb"] = cfg.bomb_count
    n_unique = n - sum(planted.values()) - len(contaminants)
    if n_unique < max(1, planted["exact_duplicate"] + planted["near_duplicate"]):
        raise ValueError(f"data.synthetic: n_images={n} is too small for the planted fault rates ({planted}, "
                         f"{len(contaminants)} contaminants)")
    entries: list[_Entry] = []
    images: list[Image.Image] = []
    for i in range(n_unique):
        img, mask, label = render_image(rng, size, label=i % len(classes), style=cfg.style)
        images.append(img)
        entries.append(_Entry("unique", jpeg(img), img.size, label=label, mask=mask, meta=_good_meta(rng)))
    sources = rng.choice(n_unique, planted["exact_duplicate"] + planted["near_duplicate"], replace=False)
    for k, src in enumerate(sources.tolist()):
        orig = entries[src]
        if k < planted["exact_duplicate"]:
            body, dims = orig.body, orig.size
        else:
            body, _ = near_duplicate(images[src], rng)
            dims = Image.open(io.BytesIO(body)).size
        fault = "exact_duplicate" if k < planted["exact_duplicate"] else "near_duplicate"
        entries.append(_Entry(fault, body, dims, label=orig.label, mask=orig.mask, source=src, meta=_good_meta(rng)))
    for k in range(planted["filtered"]):
        entries.append(_filtered(rng, FILTER_FAULTS[k % len(FILTER_FAULTS)], size, cfg.style))
    for _ in range(planted["corrupt"]):
        img, _, _ = render_image(rng, size, style=cfg.style)
        entries.append(_Entry("corrupt", corrupt(jpeg(img), rng), img.size, meta=_good_meta(rng)))
    entries += [_Entry("dead_url", None, (size, size), meta=_good_meta(rng)) for _ in range(planted["dead_url"])]
    entries += [_Entry("non_image", html_page(rng), (size, size), ext="html", meta=_good_meta(rng))
                for _ in range(planted["non_image"])]
    entries += [_Entry("decompression_bomb", bomb_png(), (size, size), ext="png", meta=_good_meta(rng))
                for _ in range(planted["decompression_bomb"])]
    for key, data in contaminants:
        entry = _contaminant(key, data, rng)
        entry.meta = _good_meta(rng)
        entries.append(entry)
    return _assemble(entries, [int(i) for i in rng.permutation(len(entries))], "syn", rng, dict(enumerate(classes)))


def image_set_corpus(items: Iterable[tuple[str, bytes, int, str]], seed: int = 0) -> Corpus:
    """Serve an existing image set ``(key, encoded bytes, label, label_name)`` as a LAION-style corpus (no faults)."""
    rng = np.random.default_rng(seed)
    entries, names = [], {}
    for key, data, label, name in items:
        with Image.open(io.BytesIO(data)) as img:
            dims, ext = img.size, (img.format or "jpg").lower().replace("jpeg", "jpg")
        entries.append(_Entry("unique", data, dims, ext=ext, label=label, origin=key, meta=_good_meta(rng)))
        names[label] = name
    if not entries:
        raise ValueError("image set is empty: nothing to serve")
    return _assemble(entries, list(range(len(entries))), "img", rng, names)


def _assemble(entries: list[_Entry], order: list[int], prefix: str, rng: np.random.Generator,
              names: dict[int, str] | None = None) -> Corpus:
    """Give rows their ids, URLs and captions in ``order``; build the files, metadata and annotations."""
    ids = {idx: f"{prefix}-{pos:07d}" for pos, idx in enumerate(order)}
    files: dict[str, bytes] = {}
    meta_rows: list[dict[str, object]] = []
    ann_rows: list[dict[str, object]] = []
    for idx in order:
        e, sid = entries[idx], ids[idx]
        path = f"{WWW}/{'pages' if e.ext == 'html' else 'images'}/{sid}.{e.ext}"
        if e.body is not None:
            files[path] = e.body
        name = (names or {}).get(e.label) or (SHAPES[e.label] if 0 <= e.label < len(SHAPES) else "object")
        caption = f"{_ADJ[int(rng.integers(len(_ADJ)))]} {name} {_SCENE[int(rng.integers(len(_SCENE)))]}"
        meta_rows.append({"sample_id": sid, "url": PLACEHOLDER + path, "caption": caption, "width": e.size[0],
                          "height": e.size[1], **{k: float(v) for k, v in e.meta.items()}, "language": "en",
                          "license": "CC0-1.0 (synthetic)" if prefix == "syn" else "see source"})
        ann_rows.append({"sample_id": sid, "fault": e.fault, "duplicate_of": ids.get(e.source, ""),
                         "origin": e.origin, "label": e.label, "label_name": name if e.label >= 0 else "",
                         "mask": png(e.mask) if e.mask is not None else None})
    metadata = pa.Table.from_pylist(meta_rows, schema=pa.schema([
        ("sample_id", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("width", pa.int32()),
        ("height", pa.int32()), ("similarity", pa.float32()), ("punsafe", pa.float32()), ("pwatermark", pa.float32()),
        ("aesthetic", pa.float32()), ("language", pa.string()), ("license", pa.string())]))
    annotations = pa.Table.from_pylist(ann_rows, schema=pa.schema([
        ("sample_id", pa.string()), ("fault", pa.string()), ("duplicate_of", pa.string()), ("origin", pa.string()),
        ("label", pa.int32()),
        ("label_name", pa.string()), ("mask", pa.binary())]))
    return Corpus(files, metadata, annotations)


def score_dedup(annotations: pa.Table, kept: dict[str, bool]) -> dict[str, float]:
    """Score keep / drop decisions (sample id -> kept, for downloaded rows) against the planted faults.

    A planted copy (exact or near duplicate) counts as found when at most one of the copy and its source is kept;
    a unique image (one that no copy duplicates) is wrongly dropped when it is not kept; a contaminated copy is found
    when dropped. Rows absent from ``kept`` (not downloaded) are ignored.
    """
    rows = [r for r in annotations.to_pylist() if r["sample_id"] in kept]
    sources = {r["duplicate_of"] for r in rows if r["duplicate_of"]}
    out: dict[str, float] = {}
    for fault in ("exact_duplicate", "near_duplicate"):
        copies = [r for r in rows if r["fault"] == fault and r["duplicate_of"] in kept]
        found = sum(not (kept[r["sample_id"]] and kept[r["duplicate_of"]]) for r in copies)
        out[f"{fault}_planted"], out[f"{fault}_found"] = len(copies), found
        out[f"{fault}_recall"] = found / len(copies) if copies else 1.0
    unique = [r for r in rows if r["fault"] == "unique" and r["sample_id"] not in sources]
    dropped = sum(not kept[r["sample_id"]] for r in unique)
    out["unique"], out["unique_wrongly_dropped"] = len(unique), dropped
    out["unique_false_drop_rate"] = dropped / len(unique) if unique else 0.0
    contaminated = [r for r in rows if r["fault"] == "contaminated"]
    out["contaminated_planted"] = len(contaminated)
    out["contaminated_found"] = sum(not kept[r["sample_id"]] for r in contaminated)
    return out

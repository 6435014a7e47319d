#!/usr/bin/env python3
# Builds the emoji training set for the default ldm bundle.
# Reads the colour bitmaps (CBDT PNGs) of Noto Color Emoji, names each emoji from
# Unicode character names (single code points, plus skin-tone sequences found as
# GSUB ligatures), composites it on white, and writes N augmented 32x32 RGB copies.
# Output: one .npz with images uint8 [N, V, 32, 32, 3] (V variants, variant 0 centred),
# names (str [N]) and a JSON list of the captions next to it.
#
#   /opt/refenv/bin/python train/make_dataset.py --out build/emoji-data/emoji32.npz
import argparse, io, json, os, sys, unicodedata
import numpy as np
from PIL import Image
from fontTools.ttLib import TTFont

SKIN = {0x1F3FB: "light skin tone", 0x1F3FC: "medium-light skin tone",
        0x1F3FD: "medium skin tone", 0x1F3FE: "medium-dark skin tone",
        0x1F3FF: "dark skin tone"}


def name_of(cps):
    """Caption for a code point sequence, or None when it cannot be named."""
    cps = [c for c in cps if c != 0xFE0F]
    try:
        if len(cps) == 1:
            return unicodedata.name(chr(cps[0])).lower()
        if len(cps) == 2 and cps[1] in SKIN:
            return unicodedata.name(chr(cps[0])).lower() + ": " + SKIN[cps[1]]
    except ValueError:
        return None
    return None


def collect(font):
    """Returns {glyph name: code point list} for single code points and ligatures."""
    cmap = font.getBestCmap()
    g2cp = {}
    for cp, g in cmap.items():
        if g not in g2cp or cp > 0xFF:  # prefer the emoji code point to ASCII aliases
            g2cp[g] = [cp]
    seqs = dict(g2cp)
    if "GSUB" in font:
        for lookup in font["GSUB"].table.LookupList.Lookup:
            for st in lookup.SubTable:
                if lookup.LookupType == 7:
                    st = st.ExtSubTable
                if getattr(st, "LookupType", lookup.LookupType) != 4:
                    continue
                for first, ligs in st.ligatures.items():
                    if first not in g2cp:
                        continue
                    for lig in ligs:
                        comps = [first] + list(lig.Component)
                        if all(c in g2cp for c in comps) and lig.LigGlyph not in seqs:
                            seqs[lig.LigGlyph] = sum((g2cp[c] for c in comps), [])
    return seqs


def to_rgb_square(png, size=128):
    im = Image.open(io.BytesIO(png)).convert("RGBA")
    w, h = im.size
    s = max(w, h)
    sq = Image.new("RGBA", (s, s), (255, 255, 255, 0))
    sq.paste(im, ((s - w) // 2, (s - h) // 2))
    bg = Image.new("RGBA", (s, s), (255, 255, 255, 255))
    return Image.alpha_composite(bg, sq).convert("RGB").resize((size, size), Image.LANCZOS)


def variant(sq, rng, res, centred):
    """Scaled and shifted copy of the 128x128 emoji on white, res x res."""
    scale = 0.9 if centred else rng.uniform(0.78, 1.0)
    dx, dy = (0, 0) if centred else rng.integers(-2, 3, size=2)
    inner = max(1, int(round(res * scale)))
    small = sq.resize((inner, inner), Image.LANCZOS)
    out = Image.new("RGB", (res, res), (255, 255, 255))
    off = (res - inner) // 2
    out.paste(small, (int(off + dx), int(off + dy)))
    return np.asarray(out, dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--font", default="/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    ap.add_argument("--out", default="build/emoji-data/emoji32.npz")
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    font = TTFont(a.font)
    strike = font["CBDT"].strikeData[0]
    seqs = collect(font)
    names, imgs, skipped = [], [], 0
    for g in sorted(seqs, key=lambda g: seqs[g]):
        if g not in strike:
            continue
        nm = name_of(seqs[g])
        if nm is None:
            skipped += 1
            continue
        bm = strike[g]
        data = getattr(bm, "imageData", None)
        if not data or data[:4] != b"\x89PNG":
            skipped += 1
            continue
        sq = to_rgb_square(data)
        imgs.append(np.stack([variant(sq, rng, a.res, v == 0) for v in range(a.variants)]))
        names.append(nm)
    # Drop duplicate names (some glyphs are aliases), keep the first.
    seen, keep = set(), []
    for i, n in enumerate(names):
        if n not in seen:
            seen.add(n)
            keep.append(i)
    imgs = np.stack([imgs[i] for i in keep])
    names = [names[i] for i in keep]
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    np.savez_compressed(a.out, images=imgs, names=np.array(names))
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump(names, f, indent=0)
    nskin = sum(1 for n in names if "skin tone" in n and ":" in n)
    print(f"{len(names)} emoji ({len(names) - nskin} single code point, {nskin} skin-tone), "
          f"{a.variants} variants of {a.res}x{a.res}, skipped {skipped} unnamed glyphs -> {a.out}")


if __name__ == "__main__":
    main()

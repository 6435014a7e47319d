#!/usr/bin/env python3
# Builds the emoji training set for the default ldm bundle.
# Reads the colour bitmaps (CBDT PNGs, 136x128) of Noto Color Emoji, maps every glyph to
# its code point sequence (cmap + GSUB ligatures: skin tones, ZWJ sequences, flags,
# keycaps), names it with the CLDR short name from Unicode's emoji-test.txt (Debian
# unicode-data; e.g. "red apple", "flag: Germany", "keycap: 1", "woman technologist"),
# with the Unicode character name and the CLDR keywords (unicode-cldr-core) beside it,
# composites it on white and writes V augmented RES x RES RGB copies.
# Output: one .npz with images uint8 [N, V, RES, RES, 3] (variant 0 centred, 90 % size),
# names (str [N]), groups and subgroups (emoji-test.txt's categories, str [N]),
# unicode_names (str [N], "" where it is the CLDR name or there is none) and keywords (JSON
# text: one list per emoji); the names also go to a .json.
#
#   python train/make_dataset.py --res 64 --out build/emoji-data/emoji64.npz
import argparse, io, json, os, re, unicodedata
import xml.etree.ElementTree as ET
import numpy as np
from PIL import Image
from fontTools.ttLib import TTFont
import uharfbuzz as hb

EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"          # Debian unicode-data
CLDR_EN = "/usr/share/unicode/cldr/common/annotations/en.xml"    # Debian unicode-cldr-core


def key(cps):
    return tuple(c for c in cps if c != 0xFE0F)


def read_emoji_test(path):
    """{code points without FE0F: (CLDR name, group, subgroup, text)} of fully-qualified lines."""
    out, group, sub = {}, "", ""
    for line in open(path, encoding="utf-8"):
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            sub = line.split(":", 1)[1].strip()
        elif ";" in line and not line.startswith("#"):
            cps, rest = line.split(";", 1)
            if "fully-qualified" not in rest.split("#")[0]:
                continue
            # "# 😀 E1.0 grinning face"
            m = re.match(r"\s*\S+\s+E\d+\.\d+\s+(.*)$", rest.split("#", 1)[1])
            if m:
                text = "".join(chr(int(c, 16)) for c in cps.split())
                out.setdefault(key(map(ord, text)), (m.group(1).strip(), group, sub, text))
    return out


def read_keywords(path):
    """{code points without FE0F: [keywords]} from CLDR's English annotations."""
    kw = {}
    if not os.path.exists(path):
        return kw
    for el in ET.parse(path).getroot().iter("annotation"):
        if el.get("type") == "tts" or not el.text:
            continue
        kw[key(ord(ch) for ch in el.get("cp"))] = [w.strip() for w in el.text.split("|") if w.strip()]
    return kw


def glyph_of(hbfont, order, text):
    """The font's glyph for an emoji sequence, shaped by HarfBuzz as a browser would, or
    None when the font draws it as more than one glyph (a sequence it does not support)."""
    buf = hb.Buffer()
    buf.add_str(text)
    buf.guess_segment_properties()
    hb.shape(hbfont, buf, {})
    gids = [g.codepoint for g in buf.glyph_infos]
    return order[gids[0]] if len(gids) == 1 and gids[0] != 0 else None


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
    shift = max(1, res // 16)
    dx, dy = (0, 0) if centred else rng.integers(-shift, shift + 1, size=2)
    inner = max(1, int(round(res * scale)))
    small = sq.resize((inner, inner), Image.LANCZOS)
    out = Image.new("RGB", (res, res), (255, 255, 255))
    off = (res - inner) // 2
    out.paste(small, (int(off + dx), int(off + dy)))
    return np.asarray(out, dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--font", default="/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    ap.add_argument("--emoji-test", default=EMOJI_TEST)
    ap.add_argument("--cldr", default=CLDR_EN)
    ap.add_argument("--out", default="build/emoji-data/emoji64.npz")
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    names_of = read_emoji_test(a.emoji_test)
    keywords = read_keywords(a.cldr)
    font = TTFont(a.font)
    strike = font["CBDT"].strikeData[0]
    order = font.getGlyphOrder()
    hbfont = hb.Font(hb.Face(hb.Blob.from_file_path(a.font)))
    rows, skipped, seen, used = [], 0, set(), set()
    for k in sorted(names_of):
        g = glyph_of(hbfont, order, names_of[k][3])
        if g is None or g not in strike or g in used or names_of[k][0] in seen:
            skipped += 1  # not in this font (newer than it), or an alias of a glyph already kept
            continue
        used.add(g)
        data = getattr(strike[g], "imageData", None)
        if not data or data[:4] != b"\x89PNG":
            skipped += 1
            continue
        name, group, sub, _ = names_of[k]
        seen.add(name)
        uname = ""
        if len(k) == 1:
            try:
                uname = unicodedata.name(chr(k[0])).lower()  # "heavy black heart" for the red heart
            except ValueError:
                pass
        kws = [w for w in keywords.get(k, []) if w != name and len(w) > 2]
        sq = to_rgb_square(data)
        imgs = np.stack([variant(sq, rng, a.res, v == 0) for v in range(a.variants)])
        rows.append((name, group, sub, (uname if uname != name else "", kws), imgs))
    images = np.stack([r[4] for r in rows])
    names = [r[0] for r in rows]
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    np.savez_compressed(a.out, images=images, names=np.array(names),
                        groups=np.array([r[1] for r in rows]), subgroups=np.array([r[2] for r in rows]),
                        unicode_names=np.array([r[3][0] for r in rows]),
                        keywords=np.array(json.dumps([r[3][1] for r in rows])))
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump(names, f, indent=0)
    kinds = {"skin tone": sum(": " in n and "skin tone" in n for n in names),
             "flag": sum(n.startswith("flag: ") for n in names),
             "keycap": sum(n.startswith("keycap: ") for n in names)}
    print(f"{len(names)} emoji ({', '.join(f'{v} {k}' for k, v in kinds.items())}), "
          f"{a.variants} variants of {a.res}x{a.res}, skipped {skipped} sequences the font lacks -> {a.out} "
          f"({os.path.getsize(a.out) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

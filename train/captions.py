# Caption variants of each emoji of the data set (train/make_dataset.py), tokenized once and
# cached beside the data set as DATA.captions.npz, so that a training run (the GPU run in
# particular) does not tokenize.
# Per emoji: base forms (the CLDR name; without a trailing " sign"/" symbol"; the part before
# " with "; the Unicode name for single code points; skin tones and flags in other word
# orders), each in templates ("X", "an emoji of X", "X emoji", "a X", "emoji of X"), the
# dominant colour word in front when the name has none ("red fire engine"), the category
# ("red apple, food fruit") and, as suffixes, the CLDR keywords ("red apple, fruit").
# The plain name appears twice, so it is the most likely caption of its emoji.
import hashlib, json, os
import numpy as np

from emoji_colour import dominant, COLOURS

VERSION = 2


def bases(name, alias):
    out = [name]

    def add(s):
        s = s.strip()
        if s and s not in out:
            out.append(s)

    short = name
    for suffix in (" sign", " symbol"):
        if short.endswith(suffix):
            short = short[: -len(suffix)]
    add(short)
    if " with " in short:
        add(short.split(" with ")[0])
    if name.startswith("flag: "):
        country = name[6:]
        add(f"flag of {country}")
        add(f"{country} flag")
    elif name.startswith("keycap: "):
        add(f"keycap {name[8:]}")
    elif ": " in name:  # "thumbs up: medium skin tone" -> "thumbs up, medium skin tone", "thumbs up"
        head, rest = name.split(": ", 1)
        add(f"{head}, {rest}")
        add(f"{rest} {head}")
    for u in alias:  # the Unicode name of a single code point, when it differs
        add(u)
        if " with " in u:
            add(u.split(" with ")[0])  # "smiling cat face with open mouth" -> "smiling cat face"
    return out


def variants(name, alias, keywords, colour, subgroup):
    out = [name]
    for b in bases(name, alias):
        out += [b, f"an emoji of {b}", f"{b} emoji", f"a {b}", f"emoji of {b}"]
    words = set(name.split())
    if colour and ": " not in name and not any(c in words for c in COLOURS):
        out += [f"{colour} {name}", f"a {colour} {name}", f"{colour} {name} emoji"]
    if subgroup:
        out.append(f"{name}, {subgroup.replace('-', ' ')}")
    for k in keywords[:6]:
        if k != name and k not in name:
            out.append(f"{name}, {k}")
    return out


def build(data_path, tok):
    d = np.load(data_path)
    names = [str(n) for n in d["names"]]
    unames = [str(u) for u in d["unicode_names"]]
    keywords = json.loads(str(d["keywords"]))
    subgroups = [str(s) for s in d["subgroups"]] if "subgroups" in d else [""] * len(names)
    imgs = d["images"]
    caps, start, count = [], [], []
    for i, n in enumerate(names):
        v = variants(n, [unames[i]] if unames[i] else [], keywords[i], dominant(imgs[i, 0]), subgroups[i])
        start.append(len(caps))
        count.append(len(v))
        caps += v
    ids = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    empty = tok([""], padding="max_length", max_length=77, return_tensors="np").input_ids[0]
    return dict(ids=ids.astype(np.uint16), start=np.array(start, np.int64), count=np.array(count, np.int64),
                empty=empty.astype(np.int64), captions=np.array(caps))


def cache_key(data_path):
    h = hashlib.sha256()
    h.update(str(VERSION).encode())
    h.update(open(__file__, "rb").read())
    d = np.load(data_path)
    h.update("\n".join(str(n) for n in d["names"]).encode())
    return h.hexdigest()[:16]


def load_or_build(data_path, tok, log=print):
    path = data_path + ".captions.npz"
    key = cache_key(data_path)
    if os.path.exists(path):
        c = dict(np.load(path))
        if str(c.get("key")) == key:
            return c
        log(f"{path}: made for another data set or captions.py; rebuilding")
    log(f"tokenizing the captions of {data_path} (cached in {path})")
    c = build(data_path, tok)
    c["key"] = np.array(key)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **c)
    os.replace(tmp, path)
    return c

#!/usr/bin/env python3
"""make_seeds.py - write the committed seed corpora of the fuzz harnesses (tests/fuzz/corpus/).

Standard library only, deterministic: running it again gives the same bytes.  Each
corpus holds small valid inputs, edge cases, and the inputs of the bugs the hardening
work fixed (named crash-*), so that the corpus run of tests/cli_fuzz.sh is also their
regression test.

    python3 tests/fuzz/make_seeds.py        # from the repository root
"""
import hashlib
import json
import os
import struct
import zlib

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
FIX = os.path.join(ROOT, "..", "fixtures")


def put(harness, name, data):
    d = os.path.join(CORPUS, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- tar / ldmb

def tar_header(name, size, typ=b"0", size_field=None):
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = size_field if size_field is not None else b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156:157] = typ
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def tar_member(name, data, typ=b"0"):
    return tar_header(name, len(data), typ) + data + b"\0" * (-len(data) % 512)


def tar(members, end=True):
    out = b"".join(tar_member(n, d) for n, d in members)
    return out + (b"\0" * 1024 if end else b"")


def pax_record(key, value):
    """ "LEN key=value\\n", LEN counting the whole record, its own digits included."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def f16(values):
    return b"".join(struct.pack("<e", v) for v in values)


def vae_tensors():
    """The tensors ldm's VAE loader asks for with latent 1, out 1, block_out [2], layers 0."""
    C, Z, O = 2, 1, 1
    t = {"post_quant_conv.weight": [Z, Z, 1, 1], "post_quant_conv.bias": [Z],
         "decoder.conv_in.weight": [C, Z, 3, 3], "decoder.conv_in.bias": [C],
         "decoder.conv_norm_out.weight": [C], "decoder.conv_norm_out.bias": [C],
         "decoder.conv_out.weight": [O, C, 3, 3], "decoder.conv_out.bias": [O]}
    for r in ("decoder.mid_block.resnets.0", "decoder.mid_block.resnets.1",
              "decoder.up_blocks.0.resnets.0"):
        for n in ("norm1", "norm2"):
            t[r + "." + n + ".weight"] = [C]
            t[r + "." + n + ".bias"] = [C]
        for n in ("conv1", "conv2"):
            t[r + "." + n + ".weight"] = [C, C, 3, 3]
            t[r + "." + n + ".bias"] = [C]
    a = "decoder.mid_block.attentions.0."
    t[a + "group_norm.weight"] = [C]
    t[a + "group_norm.bias"] = [C]
    for n in ("to_q", "to_k", "to_v", "to_out.0"):
        t[a + n + ".weight"] = [C, C]
        t[a + n + ".bias"] = [C]
    return t


VAE_CONFIG = json.dumps({
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [2],
    "down_block_types": ["DownEncoderBlock2D"], "in_channels": 1, "latent_channels": 1,
    "layers_per_block": 0, "norm_num_groups": 1, "out_channels": 1, "sample_size": 8,
    "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"]}, indent=1).encode()
SCHED_CONFIG = json.dumps({
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "set_alpha_to_one": False, "steps_offset": 1}, indent=1).encode()


def bundle(configs, tensors, components):
    """An .ldmb bundle as ldmpack writes it (bundle/FORMAT.md): (members, manifest dict)."""
    h = hashlib.sha256(b"ldmb-content-v1\n")
    members = []
    for name, data in configs:
        h.update(b"member %s\n%d\n" % (name.encode(), len(data)) + data)
        members.append({"name": name, "size": len(data), "crc32": zlib.crc32(data)})
    weights, index = b"", []
    for k, (name, shape) in enumerate(sorted(tensors.items())):
        n = prod(shape)
        data = f16([((k * 7 + i) % 11 - 5) / 8 for i in range(n)])
        weights += b"\0" * (-len(weights) % 64)
        index.append({"name": name, "dtype": "F16", "shape": shape, "offset": len(weights),
                      "nbytes": len(data), "crc32": zlib.crc32(data)})
        h.update(b"tensor %s\nF16 [%s]\n%d\n" % (name.encode(), ",".join(map(str, shape)).encode(),
                                                  len(data)) + data)
        weights += data
    weights += b"\0" * (-len(weights) % 64)
    manifest = {"format": "ldmb", "format_version": 1, "ldm_version": "0.1.0",
                "created_by": "make_seeds.py", "content_hash": h.hexdigest(),
                "components": components, "members": members,
                "weights": {"member": "weights.bin", "size": len(weights), "alignment": 64,
                            "dtype": "F16"},
                "tensors": index}
    return configs, weights, manifest


def ldmb(configs, weights, manifest, order=None):
    m = json.dumps(manifest, indent=1).encode()
    entries = [(b"manifest.json", m)] + [(n.encode(), d) for n, d in configs] + [(b"weights.bin", weights)]
    if order:
        entries = [entries[i] for i in order]
    return tar(entries)


def bundle_seeds():
    vt = {"vae." + k: v for k, v in vae_tensors().items()}
    comps = {"vae": {"config": "vae/config.json", "tensors": len(vt),
                     "parameters": sum(prod(s) for s in vt.values())},
             "scheduler": {"config": "scheduler/scheduler_config.json"}}
    cfgs = [("vae/config.json", VAE_CONFIG), ("scheduler/scheduler_config.json", SCHED_CONFIG)]
    c, w, man = bundle(cfgs, vt, comps)
    good = ldmb(c, w, man)
    put("bundle", "vae-tiny.ldmb", good)

    # scheduler only: no tensors, an empty weights.bin
    c2, w2, m2 = bundle([("scheduler/scheduler_config.json", SCHED_CONFIG)], {},
                        {"scheduler": {"config": "scheduler/scheduler_config.json"}})
    put("bundle", "scheduler-only.ldmb", ldmb(c2, w2, m2))

    # the same bundle with an extra member whose long name is in a pax 'x' header
    long_name = ("extra/" + "x" * 120 + ".json").encode()
    data = (tar_member(b"manifest.json", json.dumps(m2, indent=1).encode()) +
            tar_member(b"scheduler/scheduler_config.json", SCHED_CONFIG) +
            tar_member(b"PaxHeader/long", pax_record(b"path", long_name), b"x") +
            tar_member(long_name[:100], b"{}") + tar_member(b"weights.bin", b"") + b"\0" * 1024)
    put("bundle", "pax-long-name.ldmb", data)

    # crash: a pax header whose base-256 size is 2^64 - 512: "off + 512 + size > file size"
    # wrapped, and parse_pax read valid records up to the end of the 4096-byte file and
    # on past the mapping (SIGSEGV)
    size256 = b"\x80\0\0\0" + struct.pack(">Q", 2**64 - 512)
    rec = pax_record(b"comment", b"a" * (4096 - 512 - 14))
    assert len(rec) == 4096 - 512
    put("bundle", "crash-pax-size-wrap.ldmb",
        tar_header(b"PaxHeader/manifest.json", 0, b"x", size256) + rec)
    # crash: a pax record whose length field is shorter than its own digits ("00000005 "):
    # the key/value length underflowed and memchr, finding no '=', ran past the mapping
    put("bundle", "crash-pax-record-length.ldmb",
        tar_member(b"PaxHeader/manifest.json", b"00000005 " + b"x" * (4096 - 512 - 9), b"x"))
    # a tensor whose element count wraps 2^64 (2^32 x 2^32), nbytes 0
    bad = json.loads(json.dumps(man))
    bad["tensors"][0]["shape"] = [2**32, 2**32]
    bad["tensors"][0]["nbytes"] = 0
    put("bundle", "numel-wrap.ldmb", ldmb(c, w, bad))
    # a tensor listed twice (was reported as an overlap)
    bad = json.loads(json.dumps(man))
    bad["tensors"][1] = dict(bad["tensors"][0])
    put("bundle", "tensor-twice.ldmb", ldmb(c, w, bad))
    # member order: manifest.json not first, weights.bin not last
    put("bundle", "manifest-second.ldmb", ldmb(c, w, man, [1, 0, 2, 3]))
    put("bundle", "weights-not-last.ldmb", ldmb(c, w, man, [0, 1, 3, 2]))
    # a duplicate member
    m = json.dumps(man, indent=1).encode()
    put("bundle", "duplicate.ldmb", tar([(b"manifest.json", m), (b"vae/config.json", VAE_CONFIG),
                                          (b"vae/config.json", VAE_CONFIG),
                                          (b"scheduler/scheduler_config.json", SCHED_CONFIG),
                                          (b"weights.bin", w)]))
    # truncated inside weights.bin
    put("bundle", "truncated.ldmb", good[:len(good) - 1024 - 700])


# ---------------------------------------------------------------- safetensors

def st(header, data=b""):
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 65504.0)
    put("safetensors", "f32-f16-bf16.safetensors", st({
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [3], "data_offsets": [16, 22]},
        "c": {"dtype": "BF16", "shape": [], "data_offsets": [22, 24]},
        "d": {"dtype": "I8", "shape": [0, 5], "data_offsets": [24, 24]}},
        f32 + f16([1, 2, 3]) + b"\x80\x3f"))
    put("safetensors", "ints.safetensors", st({
        "i64": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]},
        "i32": {"dtype": "I32", "shape": [1], "data_offsets": [8, 12]},
        "u8": {"dtype": "U8", "shape": [2], "data_offsets": [12, 14]},
        "bool": {"dtype": "BOOL", "shape": [2], "data_offsets": [14, 16]},
        "f64": {"dtype": "F64", "shape": [1], "data_offsets": [16, 24]}},
        struct.pack("<qiBB??d", -5, 7, 1, 2, True, False, 3.5)))
    # crash: shape [2^62] F32 with offsets [0, 0] computed 0 bytes and was accepted
    put("safetensors", "crash-shape-2e62.safetensors", st({
        "a": {"dtype": "F32", "shape": [2**62], "data_offsets": [0, 0]}}))
    put("safetensors", "shape-zero-dim-huge.safetensors", st({
        "a": {"dtype": "F32", "shape": [2**62, 0], "data_offsets": [0, 0]}}))
    # crash (UBSan): a header with no tensors called qsort on NULL
    put("safetensors", "crash-no-tensors.safetensors", st({}))
    put("safetensors", "metadata-only.safetensors", st({"__metadata__": {"k": "v"}}))
    put("safetensors", "overlap.safetensors", st({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12))
    put("safetensors", "hole.safetensors", st({
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8))
    # a sharded index (the harness provides shards a.safetensors and b.safetensors)
    put("safetensors", "index.txt", "INDEX\n" + json.dumps(
        {"metadata": {"total_size": 12}, "weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}))
    put("safetensors", "index-missing-shard.txt", "INDEX\n" + json.dumps(
        {"weight_map": {"x": "a.safetensors", "z": "c.safetensors"}}))


# ---------------------------------------------------------------- png

def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))


def png(w, h, color, depth, pixel_rows, extra=(), interlace=0, after=()):
    """pixel_rows(x0, y0, dx, dy) -> list of row byte strings for that (sub)image."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace)
    raw = b""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)] if interlace else [(0, 0, 1, 1)]
    for x0, y0, dx, dy in passes:
        for row in pixel_rows(x0, y0, dx, dy):
            raw += b"\0" + row
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    for t, d in extra:
        out += chunk(t, d)
    out += chunk(b"IDAT", zlib.compress(raw, 9))
    for t, d in after:
        out += chunk(t, d)
    return out + chunk(b"IEND", b"")


def rows_of(w, h, bpp_bytes, fn):
    def rows(x0, y0, dx, dy):
        xs, ys = range(x0, w, dx), range(y0, h, dy)
        if not xs or not ys:
            return []
        return [b"".join(fn(x, y) for x in xs) for y in ys]
    return rows


def png_seeds():
    rgb = rows_of(4, 3, 3, lambda x, y: bytes([x * 60, y * 80, 128]))
    put("png", "rgb-texts.png", png(4, 3, 2, 8, rgb, extra=[
        (b"tEXt", b"parameters\0a red apple\nSteps: 20, Seed: 42"),
        (b"zTXt", b"Comment\0\0" + zlib.compress("caf\xe9".encode("latin-1"))),
        (b"iTXt", b"Title\0\0\0en\0Titel\0" + "smiling cat \u263a".encode())],
        after=[(b"tEXt", b"Software\0ldm")]))
    put("png", "gray1.png", png(8, 2, 0, 1, lambda x0, y0, dx, dy: [b"\xa5", b"\x5a"]))
    put("png", "palette-trns.png", png(4, 2, 3, 2, lambda x0, y0, dx, dy: [b"\x1b", b"\xe4"],
                                       extra=[(b"PLTE", bytes(range(12))), (b"tRNS", b"\x00\x80")]))
    put("png", "rgba16.png", png(2, 2, 6, 16, rows_of(2, 2, 8, lambda x, y: struct.pack(
        ">4H", x * 30000, y * 30000, 12345, 65535))))
    put("png", "gray-alpha-interlaced.png", png(5, 5, 4, 8, rows_of(5, 5, 2, lambda x, y: bytes(
        [x * 50, 255 - y * 40])), interlace=1))
    put("png", "gamma-srgb.png", png(1, 1, 2, 8, rows_of(1, 1, 3, lambda x, y: b"\1\2\3"), extra=[
        (b"gAMA", struct.pack(">I", 45455)), (b"sRGB", b"\0"), (b"pHYs", struct.pack(">IIB", 1, 1, 0))]))
    # 100000 x 100000: libpng accepts the header, ldm refuses before allocating
    huge = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    put("png", "huge-header.png", huge + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    whole = png(4, 3, 2, 8, rgb)
    put("png", "truncated.png", whole[:len(whole) - 20])
    put("png", "signature-only.png", b"\x89PNG\r\n\x1a\n")


# ---------------------------------------------------------------- tokenizer

def tokenizer_seeds():
    with open(os.path.join(FIX, "clip", "prompts.txt"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < 8:
                put("tokenizer", "prompt-%02d.txt" % i, line.rstrip("\n"))
    put("tokenizer", "special.txt", "<|startoftext|>a photo<|endoftext|> of <|endoftext|>!")
    put("tokenizer", "contractions.txt", "it's they'll we've I'm you'd don't THEY'RE")
    put("tokenizer", "unicode.txt", "Caf\u00e9 na\u00efve \u00c5ngstr\u00f6m \u0130stanbul \u03a3\u03bf\u03c6\u03af\u03b1 "
        "\u65e5\u672c\u8a9e \U0001F34E\U0001F431 e\u0301 \uff21\uff22 \u2160 \u00bd")
    put("tokenizer", "spaces.txt", "\u00a0\u2003tab\tnew\nline\r\n\u3000end   ")
    put("tokenizer", "long.txt", "word " * 120)
    put("tokenizer", "digits-punct.txt", "1990s 3.14159 $100 #tag @user ... !!! ??? (a) [b] {c}")
    put("tokenizer", "invalid-utf8.txt", b"abc\xff\xfe def \xc3( \xe2\x82 \xed\xa0\x80")
    put("tokenizer", "nul.txt", b"before\0after")
    # AUTOMATIC1111's prompt syntax (model/prompt.c)
    put("tokenizer", "a1111-weights.txt", "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))). \\(x\\) \\\\ (y: -1.5 )")
    put("tokenizer", "a1111-break.txt", "a BREAK b\u00a0BREAK\u00a0c xBREAK (d BREAK e:0) [f:1.2.3] (g:1.2.3")
    put("tokenizer", "a1111-long.txt", "red apple, " * 100 + "(green " * 30)
    # tokenizer_config.json / special_tokens_map.json mode (see fuzz_tokenizer.c)
    with open(os.path.join(FIX, "models", "sd2", "tokenizer", "tokenizer_config.json"), "rb") as f:
        put("tokenizer", "config-sd2.txt", b"CONFIG\n" + f.read())
    with open(os.path.join(FIX, "models", "sd1", "tokenizer", "special_tokens_map.json"), "rb") as f:
        put("tokenizer", "special-sd1.txt", b"SPECIAL\n" + f.read())


# ---------------------------------------------------------------- configs

def config_seeds():
    for tag in ("sd1", "sd2"):
        for comp, member in (("unet", "config.json"), ("vae", "config.json"),
                             ("text_encoder", "config.json"), ("scheduler", "scheduler_config.json")):
            with open(os.path.join(FIX, "models", tag, comp, member), "rb") as f:
                put("config", "%s-%s.json" % (tag, comp), f.read())
    with open(os.path.join(FIX, "models", "sd1", "unet", "config.json")) as f:
        unet = json.load(f)
    with open(os.path.join(FIX, "models", "sd1", "vae", "config.json")) as f:
        vae = json.load(f)
    with open(os.path.join(FIX, "models", "sd1", "text_encoder", "config.json")) as f:
        clip = json.load(f)

    def edited(base, **kw):
        d = dict(base)
        d.update(kw)
        return json.dumps(d, indent=1)
    # crashes: counts that made the loaders allocate hundreds of GB and abort, ints that
    # overflowed (UBSan) and errors that blamed the wrong field
    put("config", "crash-unet-layers.json", edited(unet, layers_per_block=2147483647))
    put("config", "crash-unet-tlayers.json", edited(unet, transformer_layers_per_block=2147483647))
    put("config", "crash-unet-block-out.json", edited(unet, block_out_channels=[1000000000, 1000000000]))
    put("config", "crash-unet-sample-size.json", edited(unet, sample_size=1000000000))
    put("config", "crash-clip-layers.json", edited(clip, num_hidden_layers=2147483647))
    put("config", "crash-vae-layers.json", edited(vae, layers_per_block=2147483647))
    put("config", "crash-vae-block-out.json", edited(vae, block_out_channels=[1e9, 1e9, 1e9, 1e9]))
    put("config", "unet-real-numbers.json", edited(unet, layers_per_block=2.0, norm_num_groups=4.0))
    put("config", "unet-lists.json", edited(unet, attention_head_dim=[2, 4],
                                            transformer_layers_per_block=[1, 2],
                                            only_cross_attention=[True, False]))
    put("config", "unet-max.json", edited(unet, layers_per_block=64, transformer_layers_per_block=64))


def main():
    bundle_seeds()
    safetensors_seeds()
    png_seeds()
    tokenizer_seeds()
    config_seeds()


if __name__ == "__main__":
    main()

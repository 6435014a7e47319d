#!/usr/bin/env python3
"""gen_a1111.py - reference data for AUTOMATIC1111's prompt syntax (ldm --prompt-syntax a1111).

A small implementation of the rules of stable-diffusion-webui's modules/prompt_parser.py
(parse_prompt_attention) and modules/sd_hijack_clip.py (tokenize_line, process_tokens,
emphasis "Original") written for this file, run on the fixture text encoders
(tests/fixtures/models/sd1, sd2: transformers' CLIPTokenizer and CLIPTextModel, weights
rounded to fp16 as ldm stores them, float32), and checked against A1111's own code on the
same strings: its parse_prompt_attention on every parser case, and its
FrozenCLIPEmbedderWithCustomWords (tokenize_line and the embeddings) on every text case.
The emphasis divides by the mean of the embedding, which is exactly 0 up to rounding for
the sd1 and sd2 fixtures (their layer norms have weight 1 and bias 0, so every token's
output has zero mean): weighted embeddings are compared on models/sd1_a1111 instead,
models/sd1_tf5 with random layer-norm weights and biases in its text encoder (written
here; its other files are links to sd1_tf5's).  sd1 and sd2 give the token ids and
weights of every case (sd2: the pad token "!" after the first EOS), and sd2 the
embeddings of the cases without weights.
A1111's code is imported, not copied: from A1111_DIR (default /tmp/a1111), a folder whose
modules/prompt_parser.py and modules/sd_hijack_clip.py are A1111's (a checkout of
stable-diffusion-webui; `pip install lark` for prompt_parser).  Its other imports
(modules.shared, devices, sd_hijack, sd_emphasis) are small and may be stubs there:
shared.opts with emphasis="Original", comma_padding_backtrack=20,
CLIP_stop_at_last_layers, use_old_emphasis_implementation=False,
textual_inversion_add_hashes_to_infotext=False; devices.device="cpu".

Writes models/sd1_a1111 and tests/fixtures/expected_a1111/ (developer machine only; CI
reads the committed files):
  parse_cases.jsonl      one parser case a line: {"text", "spans": [[text, weight], ...]}
                         or {"text", "error": "not a number"} (A1111 raises ValueError), and
                         "chunks": the sd1 tokenization, per chunk [[id, weight], ...] of the
                         text's tokens (BOS, EOS and padding not listed), "token_count"
  text_sd1_a1111.safetensors, text_sd2.safetensors
                         per text case NAME: P_NAME, N_NAME = the prompt's and the negative
                         prompt's embedding [77 * chunks, C] after padding to the same chunks
                         (sd2: the cases without weights)
  run_NAME.safetensors   txt2img runs on sd1_a1111 (its PNDM scheduler, 20 steps, 64x64, seed 42,
                         guidance 7.5) of diffusers' StableDiffusionPipeline given P and N as
                         prompt_embeds / negative_prompt_embeds: image U8 [1,64,64,3],
                         latents_final
  index.json             versions, tolerances, every text case (prompt, negative, clip skip,
                         per model: ids, weights, chunks, token counts, pad_conds) and run

Run from the repository root: /opt/curenv/bin/python tests/gen_a1111.py
"""
import json
import os
import random
import shutil
import re
import sys
import types

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as gf  # noqa: E402  (load_components, gen, FIX)

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

OUT = os.path.join(gf.FIX, "expected_a1111")
A1111_DIR = os.environ.get("A1111_DIR", "/tmp/a1111")
CHUNK = 75          # tokens per chunk (model_max_length 77 - BOS - EOS)
BACKTRACK = 20      # A1111's comma_padding_backtrack default

# ---------------------------------------------------------------------------------------
# models/sd1_a1111: sd1_tf5 with layer norms that are not the identity


def make_model():
    src, dst = os.path.join(gf.MODELS, "sd1_tf5"), os.path.join(gf.MODELS, "sd1_a1111")
    shutil.rmtree(dst, ignore_errors=True)
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for f in files:
            if (rel, f) == ("text_encoder", "model.safetensors"):
                continue
            depth = 1 if rel == "." else 2
            os.symlink(os.path.join(*([".."] * depth), "sd1_tf5", *([] if rel == "." else [rel]), f),
                       os.path.join(dst, rel, f))
    sd = load_file(os.path.join(src, "text_encoder", "model.safetensors"))
    g = torch.Generator("cpu").manual_seed(1111)
    for k in sorted(sd):
        if "layer_norm" in k:
            v = sd[k].float()
            if k.endswith(".weight"):
                v = 1 + 0.25 * torch.randn(v.shape, generator=g)
            else:
                v = 0.15 + 0.25 * torch.randn(v.shape, generator=g)
            sd[k] = v.half()
    save_file(sd, os.path.join(dst, "text_encoder", "model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------
# the rules, implemented here

# BREAK as a word of its own: no word character right before B or right after K
SPLIT_BREAK = re.compile(r"\s*(?<!\w)BREAK(?!\w)\s*")
NUMBER = re.compile(r":\s*([+-]?[.\d]+)\s*\)")


def parse(text):
    """[[text, weight], ...]; ValueError for a weight that is not a number."""
    spans, rounds, squares = [], [], []

    def scale(start, m):
        for s in spans[start:]:
            s[1] *= m

    def add_text(t):
        for k, part in enumerate(SPLIT_BREAK.split(t)):
            if k:
                spans.append(["BREAK", -1])
            spans.append([part, 1.0])

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 < n and text[i + 1] in "()[]\\":
                spans.append([text[i + 1], 1.0])
                i += 2
            else:                       # a backslash before anything else is dropped
                spans.append(["", 1.0])
                i += 1
        elif c == "(":
            rounds.append(len(spans))
            i += 1
        elif c == "[":
            squares.append(len(spans))
            i += 1
        elif c == ":":
            m = NUMBER.match(text, i)
            if m and rounds:
                w = float(m.group(1))   # ValueError: "1.2.3", "."
                scale(rounds.pop(), w)
                i = m.end()
            elif m:
                add_text(m.group(0))
                i = m.end()
            else:
                add_text(":")
                i += 1
        elif c == ")" and rounds:
            scale(rounds.pop(), 1.1)
            i += 1
        elif c == "]" and squares:
            scale(squares.pop(), 1 / 1.1)
            i += 1
        elif c in ")]":
            add_text(c)
            i += 1
        else:
            j = i
            while j < n and text[j] not in "\\()[]:":
                j += 1
            add_text(text[i:j])
            i = j
    for start in rounds:
        scale(start, 1.1)
    for start in squares:
        scale(start, 1 / 1.1)
    if not spans:
        spans = [["", 1.0]]
    out = [spans[0]]
    for s in spans[1:]:
        if s[1] == out[-1][1]:
            out[-1] = [out[-1][0] + s[0], s[1]]
        else:
            out.append(s)
    return out


def chunk_tokens(tok, text):
    """A1111's chunks of text: list of (ids[77], weights[77] as python floats), token count,
    the text's tokens per chunk."""
    spans = parse(text)
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    comma = tok.get_vocab().get(",</w>")
    chunks, counts = [], []
    cur, cur_w = [], []
    state = {"count": 0, "comma": -1}

    def close(last=False):
        state["count"] += len(cur) if last else CHUNK
        counts.append(len(cur))
        ids = [bos] + cur + [eos] * (CHUNK - len(cur)) + [eos]
        ws = [1.0] + cur_w + [1.0] * (CHUNK - len(cur)) + [1.0]
        chunks.append((ids, ws))
        state["comma"] = -1
        cur.clear()
        cur_w.clear()

    for text_, w in spans:
        if text_ == "BREAK" and w == -1:
            close()
            continue
        for t in tok(text_, add_special_tokens=False)["input_ids"]:
            if t == comma:
                state["comma"] = len(cur)
            elif len(cur) == CHUNK and state["comma"] != -1 and len(cur) - state["comma"] <= BACKTRACK:
                at = state["comma"] + 1
                moved, moved_w = cur[at:], cur_w[at:]
                del cur[at:], cur_w[at:]
                close()
                cur.extend(moved)
                cur_w.extend(moved_w)
            if len(cur) == CHUNK:
                close()
            cur.append(t)
            cur_w.append(w)
    if cur or not chunks:
        close(last=True)
    if pad != eos:   # SD 2.x: everything after a chunk's first EOS is the pad token
        for ids, _ in chunks:
            k = ids.index(eos)
            ids[k + 1:] = [pad] * (len(ids) - k - 1)
    return chunks, state["count"], counts


def encode(text_model, ids, clip_skip):
    with torch.no_grad():
        out = text_model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        if clip_skip > 1:
            final_ln = getattr(text_model, "text_model", text_model).final_layer_norm   # transformers 5: none
            return final_ln(out.hidden_states[-clip_skip])[0]
        return out.last_hidden_state[0]


def embed(comp, text, clip_skip):
    """[77 * chunks, C] and the layout."""
    chunks, count, counts = chunk_tokens(comp["tokenizer"], text)
    zs = []
    for ids, ws in chunks:
        z = encode(comp["text_encoder"], ids, clip_skip)
        w = torch.tensor(ws, dtype=torch.float32)
        if (w != 1).any():   # with every weight 1 the ratio is exactly 1 (0/0 for sd2's zero mean)
            m0 = z.mean()
            z = z * w[:, None]
            z = z * (m0 / z.mean())
        zs.append(z)
    layout = {"n_chunks": len(chunks), "token_count": count, "chunk_tokens": counts,
              "ids": [i for ids, _ in chunks for i in ids],
              "weights": [float(np.float32(x)) for _, ws in chunks for x in ws]}
    return torch.cat(zs), layout


def pair(comp, prompt, negative, clip_skip):
    """Prompt and negative prompt padded to the same chunks with the empty prompt's."""
    P, lp = embed(comp, prompt, clip_skip)
    N, ln = embed(comp, negative, clip_skip)
    empty, _ = embed(comp, "", clip_skip)
    padded = P.shape[0] != N.shape[0]
    while P.shape[0] < N.shape[0]:
        P = torch.cat([P, empty])
    while N.shape[0] < P.shape[0]:
        N = torch.cat([N, empty])
    return P, N, lp, ln, padded


# ---------------------------------------------------------------------------------------
# A1111's own code, for the cross-check

def a1111():
    sys.path.insert(0, A1111_DIR)
    try:
        from modules import prompt_parser, sd_hijack_clip, shared
    except ImportError as e:
        sys.exit("gen_a1111.py: cannot import A1111's modules from %s (%s); set A1111_DIR" % (A1111_DIR, e))
    return prompt_parser, sd_hijack_clip, shared


class _Transformer:
    """The text encoder as A1111 calls it (transformers 5's CLIPTextModel has no .text_model)."""
    def __init__(self, m):
        self.m, self.text_model = m, getattr(m, "text_model", m)

    def __call__(self, **kw):
        return self.m(**kw)


def a1111_embedder(sd_hijack_clip, comp):
    wrapped = types.SimpleNamespace(tokenizer=comp["tokenizer"], transformer=_Transformer(comp["text_encoder"]))
    hijack = types.SimpleNamespace(
        embedding_db=types.SimpleNamespace(find_embedding_at_position=lambda tokens, pos: (None, None)),
        fixes=None, extra_generation_params={})
    m = sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords(wrapped, hijack)
    m.id_pad = comp["tokenizer"].pad_token_id   # SD 2.x's OpenCLIP embedder pads with 0 ("!")
    return m


def check_a1111_text(sd_hijack_clip, shared, comp, text, clip_skip, mine, layout):
    m = a1111_embedder(sd_hijack_clip, comp)
    shared.opts.CLIP_stop_at_last_layers = clip_skip
    chunks, count = m.tokenize_line(text)
    ids = [i for c in chunks for i in c.tokens]
    ws = [float(np.float32(x)) for c in chunks for x in c.multipliers]
    if m.id_pad != m.id_end:
        ids = []
        for c in chunks:
            t = list(c.tokens)
            k = t.index(m.id_end)
            ids += t[:k + 1] + [m.id_pad] * (len(t) - k - 1)
    assert ids == layout["ids"], "ids differ from A1111's for %r" % text
    assert ws == layout["weights"], "weights differ from A1111's for %r" % text
    assert count == layout["token_count"], "token count %d, A1111 %d for %r" % (layout["token_count"], count, text)
    if mine is None:
        return 0.0
    with torch.no_grad():
        z = m([text])[0]
    d = (z - mine).abs().max().item()
    assert d <= 1e-6, "embedding differs from A1111's by %g for %r" % (d, text)
    return d


# ---------------------------------------------------------------------------------------
# cases

WORDS = ["castle", "tall towers", "red flags", "a river", "green hills", "morning light",
         "soft clouds", "a stone bridge", "two knights", "golden armor", "a dragon", "smoke",
         "pine trees", "snow", "a lake", "reflections", "birds", "a winding road"]


def comma_prompt(n_tokens, tok, weighted=False):
    """Phrases joined by ", " until n_tokens tokens; some weighted."""
    parts, k = [], 0
    while len(tok(", ".join(parts), add_special_tokens=False)["input_ids"]) < n_tokens:
        w = WORDS[k % len(WORDS)]
        if weighted and k % 5 == 1:
            w = "(%s:1.2)" % w
        elif weighted and k % 7 == 3:
            w = "[%s]" % w
        parts.append(w)
        k += 1
    return ", ".join(parts)


def text_cases(tok):
    long150 = comma_prompt(150, tok)
    long_w = comma_prompt(160, tok, weighted=True)
    # a 30-word run without a comma across the first chunk boundary: a hard cut at 75
    run = " ".join(["stone"] * 30)
    mixed = comma_prompt(60, tok) + ", " + run + ", " + comma_prompt(40, tok)
    negative_long = comma_prompt(110, tok) + ", (blurry:1.3), [cropped]"
    return [
        ("plain_equiv", "a photo of an astronaut riding a horse on mars", "", 1),
        ("emphasis", "a (red) cube on a (wooden table:1.4)", "blurry, (low quality:1.2)", 1),
        ("deemphasis_nested", "((a red cube)) on [[a table]], (sky (blue:1.3) [clouds]:0.8)", "", 1),
        ("escapes_unbalanced", "a \\(literal\\) cube \\[x\\] back\\\\slash, (open (paren [square", "ugly]", 1),
        ("break", "a red cube BREAK a (blue) sky BREAK BREAK green grass", "", 1),
        ("long150_commas", long150, "blurry", 1),
        ("long_weighted", long_w, "", 1),
        ("long_hard_cut", mixed, "", 1),
        ("negative_longer", "a (red) cube", negative_long, 1),
        ("empty", "", "", 1),
        ("clip_skip2", "((a red cube)) on [a table] BREAK (sunset:1.2)", "blurry, [dark]", 2),
    ]


def parse_cases():
    fixed = [
        "normal text", "an (important) word", "(unbalanced", "\\(literal\\]", "(unnecessary)(parens)",
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "", " ", "a\\b", "\\", "\\\\", "\\\\\\",
        "\\a\\(\\)\\[\\]", "((((", "))))", "]]]][[[[", "(:1.5)", ":1.5)", "[x:1.5]", "(x:1.5))", "((x:1.5)",
        "(x:1.5", "a:b:c", "(a:b:1.2)", "\\(x:1.2\\)", "(x\\:1.2)", "(x: 1.5 )", "(x:+1.5)", "(x:-.5)",
        "(x:1.)", "(x:.5)", "(x:.)", "(x:1.2.3)", "(x::1)", "(x:1 .5)", "(x:1e5)", "(x:0)", "(x:-1)",
        "(a BREAK b:0)", "BREAK", "xBREAK", "BREAKx", "a BREAK", " BREAK ", "BREAK_x", "a\nBREAK\tb",
        "(BREAK)", "[BREAK]", "a\\BREAK", "BREAK:", "a BREAK BREAK b", "(x)BREAK y", "BREAK(x)",
        "a,BREAK,b", "a.BREAK.b", "break Break BREAK", "(x:\u0661.\u0665)", "(x:\uff11.\uff15)",
        "a\u00a0BREAK\u00a0b", "\u00e9BREAK", "\u00e9 BREAK", "\u65e5\u672cBREAK", "a_BREAK", "a\u3000BREAK",
        "[[a]:1.5]", "([a]:1.5)", "((a):1.5)", "(a [b (c [d] e) f] g)", "[a (b:2) c]", "(a:2)(b:2)",
        "(a:2) (b:2)", "x (a:1.1) (b) y", "[a][b]", "((a)(b))", "(a\\)b)", "(a\\]b)", "a]b)c(d[e",
        "an (emph) word, " * 3, "cat (dog:1.21) (((bird)))",
    ]
    rnd = random.Random(1111)
    alphabet = ["(", ")", "[", "]", ":", "\\", " ", "a", "b", "1", ".", "2", "-", "BREAK", " BREAK ",
                ",", "\u00e9", "\u00a0", "\u0663", "_", "cat", ":1.5)", ":0.5", "\n"]
    rand = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 14))) for _ in range(400)]
    seen, out = set(), []
    for t in fixed + rand:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def run_case(comp, name, prompt, negative, clip_skip):
    P, N, lp, ln, padded = pair(comp, prompt, negative, clip_skip)
    pipe = StableDiffusionPipeline(vae=comp["vae"], text_encoder=comp["text_encoder"],
                                   tokenizer=comp["tokenizer"], unet=comp["unet"],
                                   scheduler=comp["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    lat = []

    def on_step_end(p, i, t, kw):
        lat.append(kw["latents"].clone())
        return kw
    with torch.no_grad():
        out = pipe(prompt_embeds=P[None], negative_prompt_embeds=N[None], num_inference_steps=20,
                   guidance_scale=7.5, height=64, width=64, generator=gf.gen(42), output_type="np",
                   callback_on_step_end=on_step_end,
                   callback_on_step_end_tensor_inputs=["latents"]).images
    u8 = (out * 255).round().astype("uint8")
    save_file({"image": torch.from_numpy(np.ascontiguousarray(u8)),
               "latents_final": lat[-1].contiguous()}, os.path.join(OUT, "run_%s.safetensors" % name))
    return {"model": "sd1_a1111", "prompt": prompt, "negative_prompt": negative, "clip_skip": clip_skip,
            "scheduler": type(comp["scheduler"]).__name__, "steps": 20, "guidance": 7.5, "width": 64,
            "height": 64, "seed": 42, "tokens": P.shape[0], "pad_conds": padded,
            "unet_evaluations": len(lat)}


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    make_model()
    prompt_parser, sd_hijack_clip, shared = a1111()
    comps = {m: gf.load_components(m) for m in ("sd1_a1111", "sd1", "sd2")}
    tok1 = comps["sd1"]["tokenizer"]

    # ---- the parser, against A1111's
    lines = []
    for text in parse_cases():
        try:
            mine = parse(text)
        except ValueError:
            mine = None
        try:
            theirs = prompt_parser.parse_prompt_attention(text)
        except ValueError:
            theirs = None
        assert mine == theirs, "parser differs from A1111's for %r: %r vs %r" % (text, mine, theirs)
        if mine is None:
            lines.append({"text": text, "error": "not a number"})
            continue
        chunks, count, counts = chunk_tokens(tok1, text)
        lines.append({"text": text, "spans": mine, "token_count": count,
                      "chunks": [[[i, float(np.float32(w))] for i, w in zip(ids[1:1 + c], ws[1:1 + c])]
                                 for (ids, ws), c in zip(chunks, counts)]})
    with open(os.path.join(OUT, "parse_cases.jsonl"), "w") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=True) + "\n")
    print("parser: %d cases agree with A1111's parse_prompt_attention" % len(lines))

    # ---- texts, against A1111's FrozenCLIPEmbedderWithCustomWords
    cases = text_cases(tok1)
    index = {"versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "transformers": transformers.__version__, "numpy": np.__version__,
                          "python": sys.version.split()[0]},
             "a1111": "stable-diffusion-webui modules/prompt_parser.py, modules/sd_hijack_clip.py "
                      "(emphasis Original, comma_padding_backtrack 20); padding of prompt and "
                      "negative prompt as its pad_cond_uncond",
             "tolerances": {"ids_weights": "exact", "embedding_rel_l2": 1e-4,
                            "image_u8_max_abs_levels": 2, "image_u8_mean_abs_levels": 0.5},
             "text_cases": [], "runs": {}}
    worst = 0.0
    for model, comp in comps.items():
        tensors = {}
        for name, prompt, negative, skip in cases:
            P, N, lp, ln, padded = pair(comp, prompt, negative, skip)
            weighted = any(w != 1 for w in lp["weights"] + ln["weights"])
            # sd1 and sd2 (identity layer norms) only for their ids, and sd2's unweighted embeddings
            with_embedding = model == "sd1_a1111" or (model == "sd2" and not weighted)
            for text, layout in ((prompt, lp), (negative, ln)):
                # A1111's own embeddings where the emphasis is well defined
                mine = embed(comp, text, skip)[0] if model == "sd1_a1111" else None
                worst = max(worst, check_a1111_text(sd_hijack_clip, shared, comp, text, skip, mine, layout))
            if with_embedding:
                tensors["P_" + name] = P.contiguous()
                tensors["N_" + name] = N.contiguous()
            index["text_cases"].append({"model": model, "name": name, "prompt": prompt, "negative_prompt": negative,
                                        "clip_skip": skip, "pad_conds": padded, "tokens": P.shape[0],
                                        "embedding": with_embedding,
                                        "prompt_layout": lp, "negative_layout": ln})
        if tensors:
            save_file(tensors, os.path.join(OUT, "text_%s.safetensors" % model))
    print("texts: %d cases x %d models agree with A1111's embedder (max abs diff %g)" % (len(cases), len(comps), worst))

    # ---- images: diffusers given the A1111-style embeddings
    c1 = comps["sd1_a1111"]
    tok = c1["tokenizer"]
    runs = [("weighted", "a (red:1.3) cube on a [wooden] table, ((sunset)), \\(studio\\)",
             comma_prompt(100, tok) + ", (blurry:1.2)", 1),
            ("long_break_skip2", comma_prompt(90, tok, weighted=True) + " BREAK (a castle:1.3)",
             "blurry, [dark]", 2)]
    for name, prompt, negative, skip in runs:
        index["runs"][name] = run_case(c1, name, prompt, negative, skip)
        print("run", name, index["runs"][name]["tokens"], "tokens")
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True, ensure_ascii=True)
        f.write("\n")


if __name__ == "__main__":
    main()

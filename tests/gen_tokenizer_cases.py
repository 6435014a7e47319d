#!/opt/refenv/bin/python
"""Write tests/fixtures/clip/extra_cases.jsonl: tokenizer edge cases encoded by transformers'
CLIPTokenizerFast (developer-only; CI reads the committed file).

Each line: {"text", "bpe", "input_ids_sd1", "input_ids_sd2"} like cases.jsonl.
  sd1: CLIPTokenizerFast(vocab, merges)                  pads with <|endoftext|> (49407)
  sd2: CLIPTokenizerFast(vocab, merges, pad_token="!")   pads with "!" (0); "!" becomes a
       special added token, so a "!" in the prompt also encodes as 0 (as in diffusers).
Usage: /opt/refenv/bin/python tests/gen_tokenizer_cases.py
"""
import json
import os

from transformers import CLIPTokenizerFast

CLIP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "clip")

LONG = ("a highly detailed oil painting of a lighthouse on a rocky cliff at sunset, dramatic clouds, "
        "crashing waves, seagulls flying, warm golden light, by a famous artist, trending on artstation, "
        "8k resolution, sharp focus, volumetric lighting, cinematic composition, rule of thirds, "
        "intricate details, masterpiece, award winning photograph, ultra realistic, hdr, "
        "soft shadows, reflections on wet rocks, mist, long exposure, wide angle lens")

TEXTS = [
    LONG,                                    # > 75 tokens: truncated, EOS kept last
    " ".join(["cat"] * 75),                  # exactly 75 tokens: fits
    " ".join(["cat"] * 76),                  # 76 tokens: one cut
    "cafe\u0301 nai\u0308ve A\u030angstro\u0308m",  # NFD accents -> NFC
    "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m",           # the same precomposed
    "\u4e00\u5e45\u5c71\u6c34\u753b \u65e5\u672c\u8a9e\u306e\u6587\u7ae0 \ud55c\uad6d\uc5b4",  # CJK
    "a cat \U0001f431 with a heart \u2764\ufe0f and a family \U0001f468\u200d\U0001f469\u200d\U0001f467",  # emoji
    "the 1990s and 2000s, 3.14159 and \u00bd, \u00b2 \u2167 \u0663",  # digits, No/Nl/Arabic digits
    "it's they're we've i'm you'll he'd don't IT'S ''s 'x",  # contractions
    "wow!!! really??? ... --- *** (((nested))) [[x]] {y} <z> #tag @user $5 100%",  # punctuation runs
    "  many   spaces\t\ttabs\n\nnewlines\r\n crlf \u00a0nbsp\u3000ideo\u2028line\x85nel  ",  # whitespace
    "",
    "   ",
    "ISTANBUL \u0130stanbul \u03a3\u039f\u03a6\u039f\u03a3 Stra\u00dfe \ufb01sh \u01c5",  # case mapping
    "\uff21\uff22\uff23 \uff11\uff12\uff13",  # fullwidth
    "a <|endoftext|> b <|ENDOFTEXT|> c <|startoftext|>",  # special tokens in the text
    "hello!!! what... ?!",                    # "!" is the sd2 pad token
    "zero\u200bwidth soft\u00adhyphen \x1cfs",  # format and control characters
    "a photo of an astronaut riding a horse on mars, highly detailed, 4k",
]


def main():
    vocab, merges = os.path.join(CLIP, "vocab.json"), os.path.join(CLIP, "merges.txt")
    sd1 = CLIPTokenizerFast(vocab, merges)
    sd2 = CLIPTokenizerFast(vocab, merges, pad_token="!")
    assert sd1.pad_token_id == 49407 and sd2.pad_token_id == 0
    out = os.path.join(CLIP, "extra_cases.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for text in TEXTS:
            enc = lambda tok: tok(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
            case = {"text": text, "bpe": sd1(text, add_special_tokens=False)["input_ids"],
                    "input_ids_sd1": enc(sd1), "input_ids_sd2": enc(sd2)}
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    print("wrote", out, len(TEXTS), "cases")


if __name__ == "__main__":
    main()

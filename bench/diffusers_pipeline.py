#!/opt/refenv/bin/python
"""Baseline for bench/bench_pipeline.sh: one diffusers StableDiffusionPipeline run on the CPU.

PyTorch float32 (the fp16 weights are upcast at load), torch threads = THREADS. Prints its
timings in the same words as `ldmgen -v`, so the bench script parses both the same way:
    models loaded in X s
    time: text X s, sampling X s, decode X s, total X s
text = time inside text_encoder.forward (prompt and negative prompt), decode = vae.decode,
sampling = from the end of text encoding to the start of decoding (UNet, CFG and scheduler).

    diffusers_pipeline.py MODEL_DIR WIDTH HEIGHT STEPS GUIDANCE SEED THREADS OUT.png PROMPT [DTYPE]

DTYPE: float32 (default) or bfloat16 (the whole pipeline in bf16: AMX through oneDNN where
the CPU has it).
"""
import sys
import time

t_start = time.time()
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402


def timed(fn, acc):
    def wrapper(*a, **k):
        t0 = time.time()
        r = fn(*a, **k)
        acc.append((t0, time.time()))
        return r
    return wrapper


def main():
    if len(sys.argv) not in (10, 11):
        sys.exit(__doc__)
    folder, w, h, steps, g, seed, threads, out, prompt = sys.argv[1:10]
    dtype = getattr(torch, sys.argv[10]) if len(sys.argv) == 11 else torch.float32
    torch.set_num_threads(int(threads))
    t0 = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype,
                                                   safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    print(f"models loaded in {time.time() - t0:.2f} s (python imports {t0 - t_start:.2f} s)",
          file=sys.stderr, flush=True)
    text, unet, dec = [], [], []
    pipe.text_encoder.forward = timed(pipe.text_encoder.forward, text)
    pipe.unet.forward = timed(pipe.unet.forward, unet)
    pipe.vae.decode = timed(pipe.vae.decode, dec)
    t1 = time.time()
    with torch.no_grad():
        img = pipe(prompt, width=int(w), height=int(h), num_inference_steps=int(steps),
                   guidance_scale=float(g), generator=torch.Generator().manual_seed(int(seed))).images[0]
    img.save(out)
    t2 = time.time()
    t_text = sum(b - a for a, b in text)
    t_dec = sum(b - a for a, b in dec)
    t_samp = dec[0][0] - text[-1][1]
    print(f"UNet evaluations: {len(unet)}, batch {2 if float(g) > 1 else 1}, "
          f"UNet time {sum(b - a for a, b in unet):.2f} s", file=sys.stderr)
    print(f"time: text {t_text:.2f} s, sampling {t_samp:.2f} s, decode {t_dec:.2f} s, "
          f"total {t2 - t1:.2f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

"""Baseline for bench/bench_pipeline.sh: OpenVINO (optimum-intel) on the CPU, static shapes.

The diffusers folder MODEL_DIR is exported once to OpenVINO IR in OV_DIR (kept for later
runs), reshaped to the run's static shapes (batch 1 image, CFG pair as one UNet batch of 2,
WIDTHxHEIGHT) and compiled with INFERENCE_PRECISION_HINT = PRECISION ("f32", or "bf16",
OpenVINO's default on CPUs with AMX: oneDNN's brgemm/brgconv AMX kernels), threads =
THREADS (INFERENCE_NUM_THREADS).  Prints its timings in the words of `ldmgen -v`:
    models loaded in X s
    UNet evaluations: N, batch 2
    time: text X s, sampling X s, decode X s, total X s

    openvino_pipeline.py MODEL_DIR OV_DIR WIDTH HEIGHT STEPS GUIDANCE SEED THREADS OUT.png PROMPT PRECISION

Install (a separate environment: optimum-intel 2.2 pins an older huggingface-hub than
diffusers 0.42 needs; measured with the environment below, which borrows torch from the
diffusers one through a .pth file):
    python3 -m venv /opt/ovenv
    echo /opt/curenv/lib/python3.11/site-packages > /opt/ovenv/lib/python3.11/site-packages/curenv.pth
    /opt/ovenv/bin/pip install --no-deps optimum-intel==2.2.0 optimum==2.3.0 openvino==2026.4.1 \
        openvino-tokenizers openvino-telemetry diffusers==0.35.2 transformers==4.57.1 \
        huggingface-hub==0.36.0 protobuf tokenizers==0.22.1
(tokenizers pinned: transformers 4.57 takes <= 0.23.0, and the borrowed environment may have
a newer one)
"""
import os
import sys
import time

t_start = time.time()


def timed(obj, acc):
    fn = obj.forward

    def wrapper(*a, **k):
        t0 = time.time()
        r = fn(*a, **k)
        acc.append((t0, time.time()))
        return r
    obj.forward = wrapper


def main():
    if len(sys.argv) != 12:
        sys.exit(__doc__)
    folder, ov_dir, w, h, steps, g, seed, threads, out, prompt, prec = sys.argv[1:]
    import numpy as np
    from optimum.intel import OVStableDiffusionPipeline
    cfg = {"INFERENCE_PRECISION_HINT": prec, "INFERENCE_NUM_THREADS": threads,
           "PERFORMANCE_HINT": "LATENCY"}
    t0 = time.time()
    if not os.path.isdir(ov_dir):
        pipe = OVStableDiffusionPipeline.from_pretrained(folder, export=True, compile=False)
        pipe.save_pretrained(ov_dir)
        print(f"exported to {ov_dir} in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
        t0 = time.time()
    pipe = OVStableDiffusionPipeline.from_pretrained(ov_dir, compile=False, ov_config=cfg)
    pipe.reshape(batch_size=1, height=int(h), width=int(w), num_images_per_prompt=1)
    pipe.compile()
    pipe.set_progress_bar_config(disable=True)
    print(f"models loaded in {time.time() - t0:.2f} s (python imports {t0 - t_start:.2f} s)",
          file=sys.stderr, flush=True)
    text, unet, dec = [], [], []
    timed(pipe.text_encoder, text)
    timed(pipe.unet, unet)
    timed(pipe.vae_decoder, dec)
    t1 = time.time()
    img = pipe(prompt, width=int(w), height=int(h), num_inference_steps=int(steps),
               guidance_scale=float(g), generator=np.random.RandomState(int(seed))).images[0]
    img.save(out)
    t2 = time.time()
    t_text = sum(b - a for a, b in text)
    t_dec = sum(b - a for a, b in dec)
    t_samp = dec[0][0] - text[-1][1]
    print(f"UNet evaluations: {len(unet)}, batch 2", file=sys.stderr)
    print(f"time: text {t_text:.2f} s, sampling {t_samp:.2f} s, decode {t_dec:.2f} s, "
          f"total {t2 - t1:.2f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

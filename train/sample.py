#!/usr/bin/env python3
# Contact sheet for a trained model folder: rows = prompts, columns = guidance scales,
# generated with diffusers' StableDiffusionPipeline (the reference ldmgen must match).
#   /opt/refenv/bin/python train/sample.py build/emoji-model /tmp/emoji_sheet.png
import sys, torch
import numpy as np
from PIL import Image, ImageDraw
from diffusers import StableDiffusionPipeline

PROMPTS = ["red apple", "smiling cat face", "grinning face", "thumbs up", "cat face",
           "pile of poo", "birthday cake", "rocket"]
SCALES = [1.0, 3.0, 7.5]


def main():
    folder, out = sys.argv[1], sys.argv[2]
    seeds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for p in PROMPTS:
        cells = []
        for s in SCALES:
            for seed in range(seeds):
                g = torch.Generator().manual_seed(seed)
                im = pipe(p, height=32, width=32, num_inference_steps=25, guidance_scale=s,
                          generator=g).images[0]
                cells.append(np.asarray(im.resize((96, 96), Image.NEAREST)))
        rows.append(np.concatenate(cells, 1))
        print(p, flush=True)
    sheet = Image.fromarray(np.concatenate(rows, 0))
    canvas = Image.new("RGB", (sheet.width + 130, sheet.height + 16), "white")
    canvas.paste(sheet, (130, 16))
    d = ImageDraw.Draw(canvas)
    for i, p in enumerate(PROMPTS):
        d.text((4, 16 + i * 96 + 40), p, fill="black")
    for j, s in enumerate(SCALES):
        d.text((130 + j * 96 * seeds + 4, 2), f"guidance {s}", fill="black")
    canvas.save(out)
    print("wrote", out)


if __name__ == "__main__":
    main()

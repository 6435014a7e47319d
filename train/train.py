#!/usr/bin/env python3
# Trains the small emoji text-to-image model that becomes ldm's default bundle.
# Three stages, each resumable, all in the diffusers / transformers classes:
#   vae   : AutoencoderKL, 32x32x3 <-> 8x8x4 (L1 + MSE + tiny KL); sets scaling_factor = 1/std.
#   unet  : CLIPTextModel (real CLIP BPE tokenizer) + UNet2DConditionModel trained jointly
#           on VAE latents with DDPM epsilon loss, 10% empty captions (classifier-free guidance).
#   (the unet stage writes the full StableDiffusionPipeline folder every --save-every seconds)
#
#   P=/opt/refenv/bin/python
#   $P train/make_dataset.py --out build/emoji-data/emoji32.npz
#   $P train/train.py vae  --data build/emoji-data/emoji32.npz --work build/emoji-work --minutes 12
#   $P train/train.py unet --data build/emoji-data/emoji32.npz --work build/emoji-work --minutes 55 \
#       --out build/emoji-model
import argparse, json, math, os, random, shutil, sys, time
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, UNet2DConditionModel, DDPMScheduler, PNDMScheduler,
                       StableDiffusionPipeline)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
CLIP_DIR = os.path.join(HERE, "..", "tests", "fixtures", "clip")

VAE_CFG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
               block_out_channels=(32, 64, 64), norm_num_groups=16, sample_size=32,
               down_block_types=("DownEncoderBlock2D",) * 3,
               up_block_types=("UpDecoderBlock2D",) * 3)
TEXT_CFG = dict(vocab_size=49408, hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=128)
UNET_CFG = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(64, 128), norm_num_groups=32, attention_head_dim=4,
                cross_attention_dim=128,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def load_images(path):
    d = np.load(path)
    x = torch.from_numpy(d["images"]).float().div(127.5).sub(1.0)  # [N,V,32,32,3] in [-1,1]
    return x.permute(0, 1, 4, 2, 3).contiguous(), [str(n) for n in d["names"]]


def nparams(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------- VAE
def train_vae(a):
    x, _ = load_images(a.data)
    N, V = x.shape[:2]
    x = x.reshape(N * V, *x.shape[2:])
    torch.manual_seed(a.seed)
    vae = AutoencoderKL(**VAE_CFG).to(a.device)
    log(f"vae params {nparams(vae)/1e6:.3f} M, {x.shape[0]} images")
    opt = torch.optim.AdamW(vae.parameters(), lr=a.lr or 1e-3, weight_decay=0.0)
    t0, step, g = time.time(), 0, torch.Generator().manual_seed(a.seed)
    l1s = []
    while time.time() - t0 < a.minutes * 60:
        idx = torch.randint(0, x.shape[0], (a.batch,), generator=g)
        b = x[idx].to(a.device)
        post = vae.encode(b).latent_dist
        rec = vae.decode(post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(a.device)).sample
        l1 = (rec - b).abs().mean()
        mse = F.mse_loss(rec, b)
        kl = post.kl().mean() / (b[0].numel())
        loss = l1 + mse + 1e-6 * kl * b[0].numel()
        lr = (a.lr or 1e-3) * min(1.0, (step + 1) / 100)
        for pg in opt.param_groups:
            pg["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        l1s.append(l1.item())
        step += 1
        if step % 10 == 0:
            log(f"vae step {step} l1 {np.mean(l1s[-10:]):.4f} mse {mse.item():.5f} kl {kl.item():.4f} "
                f"elapsed {time.time()-t0:.0f}s")
    # scaling factor = 1 / std of the latent means over the whole set
    with torch.no_grad():
        mus = torch.cat([vae.encode(x[i:i + 512].to(a.device)).latent_dist.mean.cpu()
                         for i in range(0, x.shape[0], 512)])
    sf = float(1.0 / mus.std())
    vae.register_to_config(scaling_factor=sf)
    os.makedirs(a.work, exist_ok=True)
    vae.to("cpu").save_pretrained(os.path.join(a.work, "vae"), safe_serialization=True)
    info = dict(steps=step, seconds=round(time.time() - t0), final_l1=float(np.mean(l1s[-100:])),
                scaling_factor=sf, params=nparams(vae))
    json.dump(info, open(os.path.join(a.work, "vae_info.json"), "w"), indent=1)
    log("vae done", info)


# ---------------------------------------------------------------------------- captions
def caption_variants(name):
    base = [name]
    short = name
    for suffix in (" sign", " symbol"):
        if short.endswith(suffix):
            short = short[: -len(suffix)]
    if short != name:
        base.append(short)
    if " with " in short:
        base.append(short.split(" with ")[0])
    if ": " in name:  # skin tone: "thumbs up sign: medium skin tone" -> "medium skin tone thumbs up"
        head, tone = name.split(": ")
        base.append(f"{head}, {tone}")
    out = []
    for b in base:
        out += [b, f"an emoji of {b}", f"{b} emoji", f"a {b}"]
    return out


def make_tokenizer():
    tok = CLIPTokenizer(os.path.join(CLIP_DIR, "vocab.json"), os.path.join(CLIP_DIR, "merges.txt"),
                        pad_token="<|endoftext|>", model_max_length=77)
    return tok


def tokenize(tok, texts):
    return tok(texts, padding="max_length", max_length=77, truncation=True,
               return_tensors="pt").input_ids


# ---------------------------------------------------------------------------- UNet + text
def build_pipeline(vae, text, unet, tok):
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                          steps_offset=1, prediction_type="epsilon")
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def strip_source_paths(folder):
    """from_pretrained records where a model came from ("_name_or_path"); that is a path of
    the training machine, not part of the model: drop it from the saved configs."""
    for sub in ("unet", "vae", "text_encoder"):
        p = os.path.join(folder, sub, "config.json")
        if os.path.exists(p):
            cfg = json.load(open(p))
            if cfg.pop("_name_or_path", None) is not None:
                json.dump(cfg, open(p, "w"), indent=2, sort_keys=True)


def save_pipeline(pipe, out):
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    strip_source_paths(tmp)
    old = out + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def train_unet(a):
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    x, names = load_images(a.data)
    N, V = x.shape[:2]
    vae = AutoencoderKL.from_pretrained(os.path.join(a.work, "vae"))
    vae.eval().requires_grad_(False).to(a.device)
    sf = vae.config.scaling_factor
    with torch.no_grad():
        flat = x.reshape(N * V, *x.shape[2:])
        dists = [vae.encode(flat[i:i + 512].to(a.device)).latent_dist for i in range(0, flat.shape[0], 512)]
        mu = torch.cat([d.mean for d in dists]).reshape(N, V, 4, 8, 8)
        sd = torch.cat([d.std for d in dists]).reshape(N, V, 4, 8, 8)
    log(f"latents {tuple(mu.shape)} scaling_factor {sf:.4f} scaled std {float((mu*sf).std()):.3f}")

    tok = make_tokenizer()
    caps = [caption_variants(n) for n in names]
    cap_ids = [tokenize(tok, c) for c in caps]
    empty_ids = tokenize(tok, [""])[0]

    if a.resume:
        # continue from a saved pipeline folder (its weights are the EMA weights)
        text = CLIPTextModel.from_pretrained(os.path.join(a.resume, "text_encoder")).to(a.device)
        unet = UNet2DConditionModel.from_pretrained(os.path.join(a.resume, "unet")).to(a.device)
        log(f"resumed text encoder and unet from {a.resume}")
    else:
        text = CLIPTextModel(CLIPTextConfig(**TEXT_CFG)).to(a.device)
        unet = UNet2DConditionModel(**UNET_CFG).to(a.device)
    log(f"text params {nparams(text)/1e6:.3f} M, unet params {nparams(unet)/1e6:.3f} M, "
        f"vae params {nparams(vae)/1e6:.3f} M")
    params = list(text.parameters()) + list(unet.parameters())
    lr0 = a.lr or 4e-4
    opt = torch.optim.AdamW(params, lr=lr0, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, prediction_type="epsilon")
    sched.alphas_cumprod = sched.alphas_cumprod.to(a.device)
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    step, t0, losses = 0, time.time(), []
    last_save = time.time()
    g = torch.Generator().manual_seed(a.seed)
    total_s = a.minutes * 60

    def save():
        # swap in EMA weights, write the pipeline, swap back
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
        text.eval(); unet.eval()
        save_pipeline(build_pipeline(vae.to("cpu"), text.to("cpu"), unet.to("cpu"), tok), a.out)
        vae.to(a.device); text.to(a.device); unet.to(a.device)
        with torch.no_grad():
            for p, l in zip(params, live):
                p.copy_(l)
        text.train(); unet.train()
        info = dict(steps=step, seconds=round(time.time() - t0), loss=float(np.mean(losses[-200:])),
                    text_params=nparams(text), unet_params=nparams(unet), vae_params=nparams(vae),
                    seed=a.seed, batch=a.batch, lr=lr0)
        json.dump(info, open(os.path.join(a.work, "unet_info.json"), "w"), indent=1)
        log("saved", a.out, info)

    text.train(); unet.train()
    while time.time() - t0 < total_s:
        i = torch.randint(0, N, (a.batch,), generator=g)
        v = torch.randint(0, V, (a.batch,), generator=g)
        z = (mu[i.to(a.device), v.to(a.device)]
             + sd[i.to(a.device), v.to(a.device)] * torch.randn(a.batch, 4, 8, 8, generator=g).to(a.device)) * sf
        ids = torch.stack([
            empty_ids if random.random() < 0.1 else cap_ids[k][random.randrange(len(cap_ids[k]))]
            for k in i.tolist()]).to(a.device)
        t = torch.randint(0, 1000, (a.batch,), generator=g).to(a.device)
        noise = torch.randn(z.shape, generator=g).to(a.device)
        zt = sched.add_noise(z, noise, t)
        cond = text(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        w = torch.clamp(snr[t], max=5.0) / snr[t]  # min-SNR-5 weighting
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        wloss = (loss * w).mean()
        frac = (time.time() - t0) / total_s
        lr = lr0 * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for pg in opt.param_groups:
            pg["lr"] = lr
        opt.zero_grad(set_to_none=True)
        wloss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_mul_(ema, d)
            torch._foreach_add_(ema, [p.detach() for p in params], alpha=1 - d)
        losses.append(loss.mean().item())
        step += 1
        if step % 25 == 0:
            log(f"step {step} loss {np.mean(losses[-100:]):.4f} lr {lr:.2e} "
                f"elapsed {time.time()-t0:.0f}s ({(time.time()-t0)/step:.2f}s/step)")
        if time.time() - last_save > a.save_every:
            save()
            last_save = time.time()
    save()
    log("done")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["vae", "unet"])
    ap.add_argument("--data", default="build/emoji-data/emoji32.npz")
    ap.add_argument("--work", default="build/emoji-work")
    ap.add_argument("--out", default="build/emoji-model")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--save-every", type=float, default=300)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--resume", default=None,
                    help="unet stage: start from this pipeline folder's text encoder and unet")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # denormals make CPU training crawl as weights shrink
    if a.stage == "vae":
        train_vae(a)
    else:
        train_unet(a)


if __name__ == "__main__":
    main()

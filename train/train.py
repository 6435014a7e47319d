#!/usr/bin/env python3
# Trains the emoji text-to-image model that becomes ldm's default bundle, in the diffusers /
# transformers classes, on the CPU or (the recorded run) one GPU:
#   vae   : AutoencoderKL, 64x64x3 <-> 4x16x16 (down 4) or 4x8x8 (down 8); by default both are
#           trained on the same batches and the better kept (train_vae says how); L1 + MSE +
#           tiny KL; scaling_factor = 1 / std of the latent means.
#   unet  : CLIPTextModel (the real CLIP BPE tokenizer) + UNet2DConditionModel trained jointly
#           on the frozen VAE's latents: DDPM epsilon loss, min-SNR-5 weighting, 10 % empty
#           captions (classifier-free guidance), EMA 0.999 (the EMA weights are saved).
#   all   : vae then unet in one process (the GPU run), under one --minutes budget.
# Images are augmented on the device every step (random scale 87-111 % of the data set's
# centred 90 % copy, i.e. 78-100 % of the cell, and a shift of up to 4 px, on white), so the
# data set needs one copy of each emoji. Captions come from train/captions.py (token ids are
# computed once and cached next to the data set, so the GPU run does not tokenize).
# The pipeline folder (fp16 safetensors) is written to --out; with --out-tar PREFIX it is also
# written as a tar split into parts just under 16 MiB, PREFIX00, PREFIX01, ... (files the device tool returns).
#
#   python train/make_dataset.py --variants 1 --out build/emoji-data/emoji64.npz
#   python train/train.py all --data build/emoji-data/emoji64.npz --minutes 7 --out build/emoji-model
import argparse, csv, io, json, math, os, random, shutil, sys, tarfile, time
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, UNet2DConditionModel, DDPMScheduler, PNDMScheduler,
                       StableDiffusionPipeline)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import captions  # noqa: E402

CLIP_DIR = os.path.join(HERE, "..", "tests", "fixtures", "clip")


def vae_config(down, res):
    levels = {4: (64, 128, 128), 8: (32, 64, 128, 128)}[down]
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=levels, norm_num_groups=32, sample_size=res,
                down_block_types=("DownEncoderBlock2D",) * len(levels),
                up_block_types=("UpDecoderBlock2D",) * len(levels))


TEXT_CFG = dict(vocab_size=49408, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=128)


def unet_config(latent):
    # 10.9 M parameters; 50 steps with guidance take about 1.4 s on 2 cores with ldm
    return dict(sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(64, 128, 192), norm_num_groups=32, attention_head_dim=8,
                cross_attention_dim=TEXT_CFG["hidden_size"],
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


class Log:
    def __init__(self, path=None):
        self.f = open(path, "a") if path else None
        self.t0 = time.time()

    def __call__(self, *a):
        s = f"{time.strftime('%H:%M:%S')} [{time.time() - self.t0:6.0f}s] " + " ".join(str(x) for x in a)
        print(s, flush=True)
        if self.f:
            self.f.write(s + "\n")
            self.f.flush()


def nparams(m):
    return sum(p.numel() for p in m.parameters())


def load_images(path, device):
    d = np.load(path)
    x = torch.from_numpy(d["images"])  # uint8 [N, V, R, R, 3]
    return x.permute(0, 1, 4, 2, 3).contiguous().to(device), [str(n) for n in d["names"]]


def augment(x8, gen, device, scale=(0.87, 1.11), shift_px=4):
    """uint8 [B, 3, R, R] -> float [-1, 1] with a random zoom and shift, white outside."""
    b, _, r, _ = x8.shape
    x = x8.float().div(127.5).sub(1.0)
    s = torch.empty(b, device=device).uniform_(*scale, generator=gen)
    t = torch.randint(-shift_px, shift_px + 1, (b, 2), device=device, generator=gen).float() * (2.0 / r)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = 1.0 / s
    theta[:, 1, 1] = 1.0 / s
    theta[:, :, 2] = -t / s[:, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # sample x - 1 so that the zero padding is white (+1) after adding 1 back
    return F.grid_sample(x - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1.0


# ---------------------------------------------------------------------------------- VAE
def train_vae(a, log, x8, seconds):
    """Trains one VAE per --vae-down value on the same batches, alternating steps, and keeps
    the best by PSNR on the centred images (a smaller latent wins unless a larger one is at
    least --vae-margin dB better: the UNet on 4x8x8 latents is 4x cheaper to sample)."""
    N, V = x8.shape[:2]
    flat = x8.reshape(N * V, *x8.shape[2:])
    torch.manual_seed(a.seed)
    gen = torch.Generator(device=a.device).manual_seed(a.seed)
    downs = [int(d) for d in str(a.vae_down).split(",")]
    vaes = [AutoencoderKL(**vae_config(d, flat.shape[-1])).to(a.device) for d in downs]
    for d, v in zip(downs, vaes):
        log(f"vae down {d}: params {nparams(v)/1e6:.3f} M, {flat.shape[0]} images")
    lr0 = a.vae_lr
    opts = [torch.optim.AdamW(v.parameters(), lr=lr0, weight_decay=0.0, **fused(a)) for v in vaes]
    t0, step, hist = time.time(), 0, []
    while time.time() - t0 < seconds:
        idx = torch.randint(0, flat.shape[0], (a.vae_batch,), device=a.device, generator=gen)
        b = augment(flat[idx], gen, a.device)
        frac = (time.time() - t0) / seconds
        lr = lr0 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        row = [step + 1, round(time.time() - t0, 1)]
        for vae, opt in zip(vaes, opts):
            with autocast(a):
                post = vae.encode(b).latent_dist
                z = post.mean + post.std * torch.randn(post.mean.shape, device=a.device, generator=gen)
                rec = vae.decode(z).sample.float()
            l1 = (rec - b).abs().mean()
            mse = F.mse_loss(rec, b)
            kl = post.kl().float().mean()
            loss = l1 + mse + 1e-6 * kl
            for pg in opt.param_groups:
                pg["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            row += [l1.item(), mse.item()] if (step + 1) % 50 == 0 else []
        step += 1
        if step % 50 == 0:
            hist.append(tuple(row))
            log(f"vae step {step} " + " ".join(
                f"[down {d}] l1 {row[2 + 2 * k]:.4f} psnr {10 * math.log10(4 / max(row[3 + 2 * k], 1e-10)):.2f} dB"
                for k, d in enumerate(downs)) + f" lr {lr:.2e}")
    results = []
    sub = flat[:: max(1, flat.shape[0] // a.vae_eval)]  # an even subset of the centred images
    for d, vae in zip(downs, vaes):
        vae.eval()
        with torch.no_grad(), autocast(a):
            mus, se = [], 0.0
            for i in range(0, sub.shape[0], 256):
                b = sub[i:i + 256].float().div(127.5).sub(1.0)
                m = vae.encode(b).latent_dist.mean
                rec = vae.decode(m).sample.float().clamp(-1, 1)
                se += float(((rec - b) ** 2).sum())
                mus.append(m.float().cpu())
            mus = torch.cat(mus)
        sf = float(1.0 / mus.std())
        vae.register_to_config(scaling_factor=sf)
        results.append(dict(down=d, steps=step, seconds=round(time.time() - t0), scaling_factor=sf,
                            params=nparams(vae), latent=list(mus.shape[1:]),
                            psnr_centred=10 * math.log10(4 / (se / sub.numel()))))
        log("vae", json.dumps(results[-1]))
    best = 0
    for k in range(1, len(results)):  # downs in any order: prefer the smaller latent within the margin
        small, big = (k, best) if results[k]["down"] > results[best]["down"] else (best, k)
        best = big if results[big]["psnr_centred"] >= results[small]["psnr_centred"] + a.vae_margin else small
    info = dict(results[best], compared=results, margin_db=a.vae_margin)
    log(f"vae chosen: down {results[best]['down']} ({results[best]['psnr_centred']:.2f} dB)")
    return vaes[best].requires_grad_(False), info, hist


# ---------------------------------------------------------------------------- UNet + text
def make_tokenizer():
    return CLIPTokenizer(os.path.join(CLIP_DIR, "vocab.json"), os.path.join(CLIP_DIR, "merges.txt"),
                         pad_token="<|endoftext|>", model_max_length=77)


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


def save_pipeline(pipe, out, tar_prefix=None):
    """Writes the pipeline folder with fp16 weights (tmp name, then rename); with tar_prefix
    also as a tar split into parts just under 16 MiB."""
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    pipe.to(torch.float32)
    strip_source_paths(tmp)
    old = out + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    if tar_prefix:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            tf.add(out, arcname=os.path.basename(out.rstrip("/")))
        data, part = buf.getvalue(), (16 << 20) - (64 << 10)  # the device tool returns files < 16 MiB
        for old_part in [p for p in os.listdir(os.path.dirname(tar_prefix) or ".")
                         if p.startswith(os.path.basename(tar_prefix))]:
            os.remove(os.path.join(os.path.dirname(tar_prefix) or ".", old_part))
        for k in range(0, len(data), part):
            with open(f"{tar_prefix}{k // part:02d}.tmp", "wb") as f:
                f.write(data[k:k + part])
            os.rename(f"{tar_prefix}{k // part:02d}.tmp", f"{tar_prefix}{k // part:02d}")


def train_unet(a, log, x8, vae, seconds, extra_info):
    torch.manual_seed(a.seed + 1)
    random.seed(a.seed + 1)
    gen = torch.Generator(device=a.device).manual_seed(a.seed + 1)
    N, V = x8.shape[:2]
    flat = x8.reshape(N * V, *x8.shape[2:])
    vae.eval().to(a.device)
    sf = vae.config.scaling_factor
    with torch.no_grad(), autocast(a):
        lat = vae.encode(flat[:8].float().div(127.5).sub(1.0)).latent_dist.mean
    latent = lat.shape[-1]
    tok = make_tokenizer()
    cap = captions.load_or_build(a.data, tok, log)
    ids = torch.from_numpy(cap["ids"].astype(np.int64)).to(a.device)      # [M, 77]
    start = torch.from_numpy(cap["start"]).to(a.device)                  # [N]
    count = torch.from_numpy(cap["count"]).to(a.device)                  # [N]
    empty = ids.new_tensor(cap["empty"])                                 # [77]
    log(f"{ids.shape[0]} captions for {N} emoji; latents 4x{latent}x{latent}, scaling factor {sf:.4f}")
    if a.resume:
        text = CLIPTextModel.from_pretrained(os.path.join(a.resume, "text_encoder")).to(a.device)
        unet = UNet2DConditionModel.from_pretrained(os.path.join(a.resume, "unet")).to(a.device)
        log(f"resumed text encoder and unet from {a.resume}")
    else:
        text = CLIPTextModel(CLIPTextConfig(**TEXT_CFG)).to(a.device)
        unet = UNet2DConditionModel(**unet_config(latent)).to(a.device)
    log(f"text params {nparams(text)/1e6:.3f} M, unet params {nparams(unet)/1e6:.3f} M, "
        f"vae params {nparams(vae)/1e6:.3f} M")
    params = list(text.parameters()) + list(unet.parameters())
    lr0 = a.lr
    opt = torch.optim.AdamW(params, lr=lr0, weight_decay=0.01, **fused(a))
    ema = [p.detach().clone() for p in params]
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, prediction_type="epsilon")
    acp = sched.alphas_cumprod.to(a.device)
    snr = acp / (1 - acp)
    step, t0, hist, run_loss = 0, time.time(), [], []
    last_save = time.time()

    def save(final=False):
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
        text.eval(); unet.eval()
        pipe = build_pipeline(vae.to("cpu"), text.to("cpu"), unet.to("cpu"), tok)
        save_pipeline(pipe, a.out, a.out_tar)
        vae.to(a.device); text.to(a.device); unet.to(a.device)
        with torch.no_grad():
            for p, l in zip(params, live):
                p.copy_(l)
        text.train(); unet.train()
        info = dict(extra_info, unet=dict(steps=step, seconds=round(time.time() - t0), batch=a.batch, lr=lr0,
                                          loss_last200=float(np.mean(run_loss[-200:])) if run_loss else None,
                                          text_params=nparams(text), unet_params=nparams(unet),
                                          ema=a.ema, seed=a.seed, final=final),
                    device=torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
                    torch=torch.__version__)
        write_info(a, info, hist)
        log("saved", a.out, json.dumps(info["unet"]))

    text.train(); unet.train()
    while time.time() - t0 < seconds:
        i = torch.randint(0, N, (a.batch,), device=a.device, generator=gen)
        v = torch.randint(0, V, (a.batch,), device=a.device, generator=gen)
        with torch.no_grad(), autocast(a):
            post = vae.encode(augment(flat[i * V + v], gen, a.device)).latent_dist
            z = (post.mean + post.std * torch.randn(post.mean.shape, device=a.device, generator=gen)).float() * sf
        pick = start[i] + (torch.rand(a.batch, device=a.device, generator=gen) * count[i]).long()
        pick = torch.minimum(pick, start[i] + count[i] - 1)
        cid = ids[pick]
        drop = torch.rand(a.batch, device=a.device, generator=gen) < 0.1
        cid = torch.where(drop[:, None], empty[None, :], cid)
        t = torch.randint(0, 1000, (a.batch,), device=a.device, generator=gen)
        noise = torch.randn(z.shape, device=a.device, generator=gen)
        s_a = acp[t].sqrt()[:, None, None, None]
        s_b = (1 - acp[t]).sqrt()[:, None, None, None]
        zt = s_a * z + s_b * noise
        with autocast(a):
            cond = text(cid)[0]
            pred = unet(zt, t, encoder_hidden_states=cond).sample.float()
        w = torch.clamp(snr[t], max=5.0) / snr[t]  # min-SNR-5 weighting
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        wloss = (loss * w).mean()
        frac = (time.time() - t0) / seconds
        lr = lr0 * min(1.0, (step + 1) / 300) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
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
        step += 1
        if step % 25 == 0:
            run_loss.append(loss.mean().item())
        if step % 100 == 0:
            hist.append((step, round(time.time() - t0, 1), float(np.mean(run_loss[-4:])), lr))
            log(f"step {step} loss {np.mean(run_loss[-4:]):.4f} lr {lr:.2e} "
                f"({(time.time() - t0) / step * 1000:.1f} ms/step)")
        if time.time() - last_save > a.save_every:
            save()
            last_save = time.time()
    save(final=True)


def write_info(a, info, unet_hist):
    json.dump(info, open(os.path.join(a.logdir, "info.json"), "w"), indent=1)
    with open(os.path.join(a.logdir, "loss.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stage", "step", "seconds", "loss", "extra"])
        downs = [c["down"] for c in info.get("vae", {}).get("compared", [])]
        for r in info.get("vae_hist", []):
            for k in range((len(r) - 2) // 2):
                w.writerow([f"vae{downs[k] if k < len(downs) else ''}", r[0], r[1], f"{r[2 + 2 * k]:.5f}",
                            f"mse {r[3 + 2 * k]:.6f}"])
        for r in unet_hist:
            w.writerow(["unet", r[0], r[1], f"{r[2]:.5f}", f"lr {r[3]:.3e}"])


def fused(a):
    return dict(fused=True) if a.device.startswith("cuda") else {}


def autocast(a):
    if a.device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["vae", "unet", "all"])
    ap.add_argument("--data", default="build/emoji-data/emoji64.npz")
    ap.add_argument("--work", default="build/emoji-work", help="where the vae stage writes its VAE")
    ap.add_argument("--out", default="build/emoji-model")
    ap.add_argument("--out-tar", default=None, help="also write the folder as a tar in parts just under 16 MiB")
    ap.add_argument("--logdir", default=None, help="train.log, info.json, loss.csv (default --work)")
    ap.add_argument("--minutes", type=float, default=10, help="whole budget (all) or this stage's")
    ap.add_argument("--vae-share", type=float, default=0.2, help="all: the VAE's share of --minutes")
    ap.add_argument("--vae-down", default="4,8", help="4, 8, or 4,8: train both, keep the better")
    ap.add_argument("--vae-margin", type=float, default=1.0, help="dB a larger latent must win by")
    ap.add_argument("--vae-batch", type=int, default=64)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-eval", type=int, default=4096, help="images for the scaling factor and PSNR")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--save-every", type=float, default=300)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--resume", default=None, help="unet stage: start from this pipeline folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    a.logdir = a.logdir or a.work
    os.makedirs(a.logdir, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)
    log = Log(os.path.join(a.logdir, "train.log"))
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # denormals make CPU training crawl as weights shrink
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    log(f"torch {torch.__version__} device {a.device}"
        + (f" ({torch.cuda.get_device_name()})" if a.device.startswith("cuda") else ""), " ".join(sys.argv))
    x8, names = load_images(a.data, a.device)
    log(f"data {a.data}: {x8.shape[0]} emoji x {x8.shape[1]} variants, {x8.shape[-1]}x{x8.shape[-1]}")
    budget = a.minutes * 60
    if a.stage in ("vae", "all"):
        secs = budget * (a.vae_share if a.stage == "all" else 1.0)
        vae, vinfo, vhist = train_vae(a, log, x8, secs)
        vae.to("cpu").save_pretrained(os.path.join(a.work, "vae"), safe_serialization=True)
        json.dump(vinfo, open(os.path.join(a.work, "vae_info.json"), "w"), indent=1)
        write_info(a, dict(vae=vinfo, vae_hist=vhist), [])
        if a.stage == "vae":
            return
        budget -= time.time() - log.t0
    else:
        vae = AutoencoderKL.from_pretrained(os.path.join(a.work, "vae"))
        vp = os.path.join(a.work, "vae_info.json")
        vinfo, vhist = (json.load(open(vp)) if os.path.exists(vp) else {}), []
    # leave time for the final save
    train_unet(a, log, x8, vae.to(a.device), max(30.0, budget - 30), dict(vae=vinfo, vae_hist=vhist))
    log("done")


if __name__ == "__main__":
    main()

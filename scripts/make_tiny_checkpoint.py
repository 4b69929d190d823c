#!/usr/bin/env python3
"""Build a tiny, deterministic, random-weight SD1.5 checkpoint that ComfyUI loads.

Layout (same key names as a real SD1.5 .safetensors checkpoint):
  model.diffusion_model.*              reduced UNet (1 level, 1 res block, 320 ch)
  cond_stage_model.transformer.text_model.*   full-size CLIP-L text encoder
  first_stage_model.*                  TAESD (ComfyUI's VAE class detects it)

Usage (inside ComfyUI's venv):
  python make_tiny_checkpoint.py --comfyui PATH/TO/ComfyUI --out tiny.safetensors
  python make_tiny_checkpoint.py --comfyui PATH/TO/ComfyUI --out tiny.safetensors --verify-only
"""
import argparse
import ast
import json
import logging
import math
import os
import sys
import time

SEED = 0

# What comfy.model_detection.detect_unet_config returns for the reduced UNet
# (the build asserts this round-trips). SD15.matches() needs context_dim 768,
# model_channels 320, conv proj_in, no adm, no temporal attention.
UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None,
    "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_output": [1, 1],  # output level has num_res_blocks + 1 blocks
    "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 768, "use_temporal_resblock": False, "use_temporal_attention": False,
}
# --full-size: the real SD1.5 UNet (4 levels, 2 res blocks each, 860M parameters), for timings on a GPU that
# match a real checkpoint's; the text encoder is full size either way, the VAE stays TAESD.
FULL_UNET_CONFIG = {
    **UNET_CONFIG,
    "image_size": 32,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
}
# SD15.unet_extra_config: 8 heads of 40 channels, as in real SD1.5.
UNET_EXTRA = {"num_heads": 8, "num_head_channels": -1}


def import_comfy(comfyui_dir):
    """Make ComfyUI importable as a CPU-only library."""
    sys.path.insert(0, os.path.abspath(os.path.expanduser(comfyui_dir)))
    import comfy.options
    comfy.options.enable_args_parsing()
    saved, sys.argv[:] = list(sys.argv), [sys.argv[0], "--cpu"]  # comfy.cli_args parses sys.argv on import
    import comfy.cli_args  # noqa: F401
    sys.argv[:] = saved
    import comfy.sd  # noqa: F401  (pulls in model_management, which must see --cpu)


def init_params(module, gen):
    """Deterministic small random init (comfy's layers skip torch's own init and leave
    torch.empty weights). Matrices/convs: N(0, 1/fan_in) keeps activations O(1);
    1-D weights are norm scales -> 1; biases -> small noise."""
    import torch
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
            else:
                p.fill_(1.0)


def build_state_dict(unet_config):
    import torch
    import comfy.ops
    import comfy.clip_model
    import comfy.sd1_clip
    import comfy.taesd.taesd
    import comfy.model_detection
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    sd = {}

    unet = UNetModel(**unet_config, **UNET_EXTRA, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    init_params(unet, gen)
    sd.update({"model.diffusion_model." + k: v for k, v in unet.state_dict().items()})

    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        clip_cfg = json.load(f)
    clip = comfy.clip_model.CLIPTextModel(clip_cfg, torch.float32, "cpu", comfy.ops.manual_cast)
    init_params(clip, gen)
    with torch.no_grad():  # CLIP-like embedding scale (the 1/fan_in rule would give ~0.036)
        clip.text_model.embeddings.token_embedding.weight.normal_(0, 0.02, generator=gen)
        clip.text_model.embeddings.position_embedding.weight.normal_(0, 0.01, generator=gen)
    for k, v in clip.state_dict().items():
        if k == "text_projection.weight":
            continue  # SD1.5 checkpoints have no projection (comfy treats it as optional)
        sd["cond_stage_model.transformer." + k] = v  # no position_ids: comfy's CLIP has no such buffer

    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    init_params(taesd, gen)
    with torch.no_grad():
        # Same scale/shift ComfyUI's VAELoader sets for SD1 TAESD (latents are unscaled by 0.18215).
        taesd.vae_scale.fill_(0.18215)
        taesd.vae_shift.fill_(0.0)
        # Decoder output x maps to pixels clamp(x, 0, 1): centre it at mid-grey so images aren't black.
        taesd.taesd_decoder[-1].bias.add_(0.5)
    sd.update({"first_stage_model." + k: v for k, v in taesd.state_dict().items()})

    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}

    detected = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
    if detected != unet_config:
        raise AssertionError(f"detect_unet_config mismatch:\n detected {detected}\n built    {unet_config}")
    mc = comfy.model_detection.model_config_from_unet_config(detected, sd)
    if type(mc).__name__ != "SD15":
        raise AssertionError(f"detected as {type(mc).__name__}, expected SD15")
    n_params = {p: sum(v.numel() for k, v in sd.items() if k.startswith(p)) for p in ("model.", "cond_stage_model.", "first_stage_model.")}
    print(f"built {len(sd)} tensors; params: {n_params}; detection -> {type(mc).__name__}")
    return sd


def save_atomic(sd, out):
    from safetensors.torch import save_file
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        save_file(sd, tmp, metadata={"format": "pt"})
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _Capture(logging.Handler):
    """Collects ComfyUI's loader messages about missing/unexpected keys."""
    MARKERS = ("unet missing", "unet unexpected", "clip missing", "clip unexpected",
               "Missing VAE keys", "Leftover VAE keys")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.msgs = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith(self.MARKERS):
            self.msgs.append(msg)


def verify(path):
    import torch
    import comfy.sd

    cap = _Capture()
    root = logging.getLogger()
    root.addHandler(cap)
    old_level = root.level
    root.setLevel(logging.DEBUG)  # the clip/VAE leftover messages are logged at DEBUG
    try:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True, embedding_directory=None)
    finally:
        root.removeHandler(cap)
        root.setLevel(old_level)

    # The only acceptable leftover: CLIP's optional text_projection / logit_scale, which
    # real SD1.5 checkpoints also lack (comfy itself logs that at DEBUG only).
    benign = {"clip_l.transformer.text_projection.weight", "clip_l.logit_scale"}
    bad = [m for m in cap.msgs
           if not (m.startswith("clip missing: ") and set(ast.literal_eval(m.split(": ", 1)[1])) <= benign)]
    print("loader key messages:", cap.msgs or "none")
    assert not bad, f"unexpected missing/unexpected keys: {bad}"

    name = type(model.model.model_config).__name__
    assert name == "SD15", f"model config is {name}, expected SD15"
    assert clip is not None, "no CLIP loaded"
    assert vae is not None, "no VAE loaded"
    assert type(vae.first_stage_model).__name__ == "TAESD", f"VAE is {type(vae.first_stage_model)}"

    gen = torch.Generator().manual_seed(SEED)
    img = vae.decode(torch.randn(1, 4, 8, 8, generator=gen))
    assert torch.isfinite(img).all(), "VAE decode produced non-finite values"
    cond = clip.encode_from_tokens(clip.tokenize("a photo of a cat"))
    assert torch.isfinite(cond).all(), "CLIP encode produced non-finite values"
    eps = model.model.apply_model(torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([1.0]), c_crossattn=cond)
    assert torch.isfinite(eps).all(), "UNet produced non-finite values"
    print(f"verify OK: {name}, VAE={type(vae.first_stage_model).__name__}, image {tuple(img.shape)} "
          f"range [{img.min():.3f}, {img.max():.3f}] mean {img.mean():.3f}; "
          f"cond {tuple(cond.shape)}; unet out std {eps.std():.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", required=True, help="ComfyUI source folder")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--verify-only", action="store_true", help="only load and check an existing file")
    ap.add_argument("--full-size", action="store_true", help="the real SD1.5 UNet (for GPU timings)")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.INFO)  # verify() lowers the root level briefly
    t0 = time.perf_counter()
    import_comfy(args.comfyui)
    if not args.verify_only:
        save_atomic(build_state_dict(FULL_UNET_CONFIG if args.full_size else UNET_CONFIG), args.out)
        print(f"wrote {args.out} in {time.perf_counter() - t0:.1f}s")
    verify(args.out)
    size = os.path.getsize(args.out)
    print(f"file size {size} bytes ({size / 2**20:.1f} MiB); total elapsed {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # make any failure an explicit non-zero exit
        logging.exception("FAILED: %s", e)
        sys.exit(1)

"""The UNet stage: the UNet and text encoder trained on the cached latents (epsilon prediction, offset noise,
min-SNR-gamma weighting, empty captions for CFG, EMA, optionally the grounding loss), resumable from the run folder."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..attention.processor import register_attention_control
from ..posterior import forward_marginal_sample
from .batches import TrainingBatches, training_batch_loader, training_data
from .ema import ExponentialMovingAverage
from .evaluation import evaluate_one_object
from .export import export_pipeline, keep_export_copy, run_training_info
from .grounding import POSITION_WORD, CrossAttentionRecorder, grounding_loss
from .run_folder import atomic_save_file, log_record
from .settings import TrainingSettings
from .text_encoder import text_layers_of_run


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Loss weight min(SNR_t, gamma) / SNR_t for epsilon prediction, SNR_t = alpha_bar_t / (1 - alpha_bar_t)."""
    alpha_bar = alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


def train_unet(pipe, settings: TrainingSettings) -> None:
    """Train pipe.unet and pipe.text_encoder on cached latents (resumable from run_dir).

    The pipeline must have the run's text encoder layers (build_run_pipeline builds it so)."""
    from ..progress import progress_bar

    run_dir = Path(settings.run_dir)
    run_layers = text_layers_of_run(run_dir)
    if run_layers is not None and run_layers != pipe.text_encoder.config.num_hidden_layers:
        raise ValueError(f"{run_dir} has a text encoder of {run_layers} layers but the pipeline's has "
                         f"{pipe.text_encoder.config.num_hidden_layers}: build it with build_run_pipeline(settings)")
    device = settings.device
    unet, text_encoder, vae = pipe.unet.to(device), pipe.text_encoder.to(device), pipe.vae.to(device)
    modules = {"unet": unet, "text_encoder": text_encoder}
    params = list(unet.parameters()) + list(text_encoder.parameters())
    layer_params = list(text_encoder.encoder.layers.parameters())
    layer_ids = {id(p) for p in layer_params}
    groups = [{"params": [p for p in params if id(p) not in layer_ids]}]
    if layer_params:  # a second group only where there are layers: runs without them keep their optimizer state
        groups.append({"params": layer_params})
    lr_scales = [1.0, settings.text_layer_lr_scale][: len(groups)]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=0.01)
    state_path, ema_path = run_dir / "unet_text.safetensors", run_dir / "unet_text_ema.safetensors"
    optim_path, meta_path = run_dir / "unet_optim.pt", run_dir / "unet_state.json"
    ema = ExponentialMovingAverage(modules, settings.ema_decay)
    start = warmup_start = 0
    if state_path.exists():
        weights = load_file(str(state_path))
        for name, m in modules.items():
            m.load_state_dict({k[len(name) + 1 :]: v for k, v in weights.items() if k.startswith(name + ".")})
        ema.shadow = {k: v.to(device) for k, v in load_file(str(ema_path)).items()}
        start = json.loads(meta_path.read_text())["step"]
        restored = False
        if optim_path.exists():
            try:
                optimizer.load_state_dict(torch.load(optim_path, weights_only=True))
                restored = True
            except ValueError as error:  # saved before the text layers had a parameter group of their own
                print(f"{optim_path.name} does not fit this optimizer ({error}): Adam starts afresh", flush=True)
        if not restored:  # weights without optimizer state (e.g. brought back from another machine): warm Adam up again
            warmup_start = start
    if start >= settings.unet_steps:
        ema.copy_to(modules)
        return

    scenes, latents, coverage = training_data(pipe, settings)
    latents = latents.to(device)  # (N, C, h, w): small enough to live on the device
    alphas_cumprod = pipe.scheduler.alphas_cumprod.to(device)
    num_train_timesteps = len(alphas_cumprod)
    batches = TrainingBatches(scenes, coverage, pipe.tokenizer, settings, latents.shape[1:], num_train_timesteps,
                              start, settings.unet_steps)
    loader = training_batch_loader(batches, settings.data_workers)
    unet.train()
    text_encoder.train()
    bar = progress_bar(range(start, settings.unet_steps), settings.progress, desc="unet")
    started = time.time()
    for step in bar:
        batch = next(loader)
        if batch["step"] != step:  # DataLoader hands out its workers' batches in turn: step order
            raise RuntimeError(f"the batch loader gave step {batch['step']} at step {step}")
        progress = max(0, step - settings.warmup_steps) / max(1, settings.unet_steps - settings.warmup_steps)
        lr = settings.min_lr + (settings.lr - settings.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))  # cosine
        if step - warmup_start < settings.warmup_steps:  # linear warm-up (at the start, or after a fresh optimizer)
            lr *= (step - warmup_start + 1) / settings.warmup_steps
        for group, scale in zip(optimizer.param_groups, lr_scales):
            group["lr"] = lr * scale
        z0 = latents[batch["index"].to(device)]
        text = text_encoder(batch["input_ids"].to(device))[0]
        noise, t = batch["noise"].to(device), batch["timesteps"].to(device)
        zt = forward_marginal_sample(z0, alphas_cumprod[t], noise)  # q(z_t | z_0), one alpha_bar_t per row
        recorder = CrossAttentionRecorder(len(z0)) if coverage is not None else None
        with register_attention_control(unet, recorder) if recorder is not None else contextlib.nullcontext():
            prediction = unet(zt, t, encoder_hidden_states=text).sample
        per_sample = (prediction.float() - noise).pow(2).flatten(1).mean(1)
        denoising_loss = (per_sample * min_snr_weights(alphas_cumprod, t, settings.min_snr_gamma).float()).mean()
        loss = denoising_loss
        if coverage is not None:
            regions, kinds = batch["regions"].to(device), batch["kinds"].to(device)
            if settings.position_grounding_weight < 0:  # one term for every grounded word
                grounding = grounding_loss(recorder.maps, regions, kinds)
                loss = denoising_loss + settings.grounding_weight * grounding
            else:  # position words weighed on their own
                is_position = kinds == POSITION_WORD
                grounding = grounding_loss(recorder.maps, regions, kinds.masked_fill(is_position, 0))
                position_grounding = grounding_loss(recorder.maps, regions, kinds * is_position)
                loss = (denoising_loss + settings.grounding_weight * grounding
                        + settings.position_grounding_weight * position_grounding)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.update(modules, step)
        done = step + 1
        out_of_time = settings.max_minutes > 0 and time.time() - started > 60 * settings.max_minutes
        if done % settings.log_every == 0 or out_of_time:
            record = {"stage": "unet", "step": done, "loss": round(denoising_loss.item(), 5), "lr": round(lr, 6),
                      "seconds": round(time.time() - started, 1)}
            if coverage is not None:
                record["grounding_loss"] = round(grounding.item(), 4)
                if settings.position_grounding_weight >= 0:
                    record["position_grounding_loss"] = round(position_grounding.item(), 4)
            log_record(run_dir, record)
        if done % settings.checkpoint_every == 0 or done == settings.unet_steps or out_of_time:
            atomic_save_file({f"{n}.{k}": v for n, m in modules.items() for k, v in m.state_dict().items()}, state_path)
            atomic_save_file(ema.shadow, ema_path)
            torch.save(optimizer.state_dict(), optim_path)
            meta_path.write_text(json.dumps({"step": done, "settings": asdict(settings)}))
        if settings.export_dir and (done % settings.export_every == 0 or done == settings.unet_steps or out_of_time):
            export_pipeline(pipe, ema, modules, settings.export_dir, run_training_info(run_dir, done))
            if settings.export_keep > 0:
                keep_export_copy(settings.export_dir, run_dir, done, settings.export_keep)
        if settings.eval_every and (done % settings.eval_every == 0 or done == settings.unet_steps):
            metrics = evaluate_one_object(pipe, ema, modules, settings)
            log_record(run_dir, {"stage": "eval", "step": done, **metrics})
        if out_of_time:
            log_record(run_dir, {"stage": "unet", "step": done, "stopped": f"max_minutes={settings.max_minutes} reached"})
            break
    ema.copy_to(modules)
    unet.eval()
    text_encoder.eval()

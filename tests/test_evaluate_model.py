"""pipelines/evaluate_model.py: the latent-locality study tells a local encoder from a non-local one."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parents[1] / "pipelines" / "evaluate_model.py"


@pytest.fixture(scope="module")
def evaluate():
    spec = importlib.util.spec_from_file_location("evaluate_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["evaluate_model"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("evaluate_model", None)


class PoolingAutoencoder:
    """A reference 'VAE' whose latent cell i depends only on the 4x4 pixels of cell i (global_mix 0), or also on
    the mean of the whole image (global_mix > 0), as an encoder with global self-attention can."""

    def __init__(self, global_mix: float = 0.0):
        self.global_mix = global_mix

    def encode(self, x):
        z = F.avg_pool2d(x, 4)
        z = z + self.global_mix * x.mean(dim=(2, 3), keepdim=True)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=z))

    def decode(self, z):
        return SimpleNamespace(sample=F.interpolate(z, scale_factor=4, mode="nearest"))


def _pipe(vae):
    vae.config = SimpleNamespace(block_out_channels=(16, 32, 32))  # factor 4: 64x64 images, 16x16 latents
    return SimpleNamespace(vae=vae, unet=SimpleNamespace(config=SimpleNamespace(sample_size=16)))


def test_latent_locality_is_near_zero_outside_the_object_for_a_local_encoder(evaluate):
    local = evaluate.latent_locality_study(_pipe(PoolingAutoencoder()), count=12, seed=0)
    # (not exactly 0: the renderer's anti-aliased edges reach a few pixels past the object's mask)
    assert local["pairs"] == 12 and local["outside_change"] < 1e-4
    mixed = evaluate.latent_locality_study(_pipe(PoolingAutoencoder(global_mix=1.0)), count=12, seed=0)
    assert mixed["outside_change"] > 0.01
    assert mixed["pasted_psnr_median_db"] < local["pasted_psnr_median_db"]  # pasting breaks the global part
    assert 0.0 <= mixed["pasted_below_25db"] <= 1.0

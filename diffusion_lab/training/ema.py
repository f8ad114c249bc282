"""The exponential moving average of the UNet's and text encoder's weights (the EMA weights are what ships), and
swapping them in for an export or an evaluation."""

from __future__ import annotations

import torch


class ExponentialMovingAverage:
    def __init__(self, modules: dict, decay: float):
        self.decay = decay
        self.shadow = {f"{name}.{k}": v.detach().clone().float() for name, m in modules.items() for k, v in m.state_dict().items()}

    @torch.no_grad()
    def update(self, modules: dict, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        shadows, values = [], []
        for name, m in modules.items():
            for k, v in m.state_dict().items():
                s = self.shadow[f"{name}.{k}"]
                if v.dtype.is_floating_point:
                    shadows.append(s)
                    values.append(v.float())
                else:
                    s.copy_(v)
        torch._foreach_lerp_(shadows, values, 1 - decay)  # s <- decay * s + (1 - decay) * v, one kernel per group

    def copy_to(self, modules: dict) -> None:
        for name, m in modules.items():
            m.load_state_dict({k[len(name) + 1 :]: v for k, v in self.shadow.items() if k.startswith(name + ".")})


def swap_in_ema(ema, modules):
    saved = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
    ema.copy_to(modules)
    return saved


def restore_weights(modules, saved):
    for name, m in modules.items():
        m.load_state_dict(saved[name])

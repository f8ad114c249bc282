# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lab 2 — The generalized posterior: $\sigma_t$, $\eta$, and faster sampling (DDIM)
#
# The lecture generalizes DDPM's Markovian forward process to a family of non-Markovian processes with the same
# marginals $q(x_t \mid x_0)$, indexed by $\sigma_t \ge 0$:
#
# $$q_\sigma(x_{t-1} \mid x_t, x_0) = \mathcal{N}\!\left(\sqrt{\bar\alpha_{t-1}}\, x_0
# + \sqrt{1 - \bar\alpha_{t-1} - \sigma_t^2}\;\frac{x_t - \sqrt{\bar\alpha_t}\, x_0}{\sqrt{1 - \bar\alpha_t}},\ \sigma_t^2 I\right).$$
#
# *Implemented by* `diffusion_lab.posterior.generalized_posterior_mean` (the mean) and
# `posterior.sample_generalized_posterior` (a draw with the true $x_0$).
#
# Sampling replaces $x_0$ by the network's prediction $\hat x_\theta(x_t, t)$:
#
# $$x_{t-1} = \underbrace{\sqrt{\bar\alpha_{t-1}}\, \hat x_\theta(x_t, t)}_{\text{predicted } x_0}
# + \underbrace{\sqrt{1 - \bar\alpha_{t-1} - \sigma_t^2}\; \frac{x_t - \sqrt{\bar\alpha_t}\,\hat x_\theta(x_t, t)}{\sqrt{1 - \bar\alpha_t}}}_{\text{direction pointing to } x_t}
# + \underbrace{\sigma_t \epsilon_t}_{\text{random noise}}.$$
#
# *Implemented by* `diffusion_lab.posterior.generalized_posterior_step` ($\hat x_\theta$ and $\hat\epsilon_\theta$ from
# the network's output: `posterior.predict_x0_and_epsilon`).
#
# DDIM writes $\sigma_t(\eta) = \eta \sqrt{\tfrac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}}\sqrt{1 - \tfrac{\bar\alpha_t}{\bar\alpha_{t-1}}}$:
# $\eta = 0$ is **DDIM** (deterministic), $\eta = 1$ is DDPM's posterior. The larger
# $\hat\sigma_t = \sqrt{1 - \bar\alpha_t / \bar\alpha_{t-1}}$ (the lecture's "$\sigma_t = \sqrt{\beta_t}$") is the paper's
# *sigma-hat* row. *Implemented by* `diffusion_lab.posterior.sigma_from_eta` and `posterior.sigma_hat`.
# Any subsequence $\tau_1 < \dots < \tau_S$ of the $T$ steps can be sampled: $S \ll T$ is fast.
#
# You will check numerically that the marginals are kept, then reproduce the DDIM paper's **Table 1** in the
# shapes world, with its samples for every $\eta$ and $S$ side by side.
#
# **How to use this lab.** Run all cells (*Run > Run All Cells*). The panels marked *Try it* have sliders that
# update when you release them and **Run** buttons for the expensive work; pipelines and inversions are cached, so a
# second edit of the same image is quick. Headless (`INTERACTIVE = False`, e.g. `python pipelines/run_labs.py`) no
# panel is shown, the same experiments run, and the figures plus a `metrics.json` are written to `OUT_DIR`.
# Every computation is a call into `diffusion_lab`; read the functions' docstrings (`help(...)`) for the details.

# %% tags=["parameters"]
# Parameters (papermill can override every name in this cell)
INTERACTIVE = True          # show the panels; False: headless, figures + metrics.json go to OUT_DIR
MODEL = "shapes-tiny"       # built-in model; on a GPU e.g. "stable-diffusion-v1-5/stable-diffusion-v1-5"
SEED = 0
STEPS = None                # S of the interactive sampler (None: the model's default, 50)
GUIDANCE = None             # w of the interactive sampler (None: 5.0 for shapes-tiny, 7.5 for Stable Diffusion)
MARGINAL_DRAWS = 2000       # Monte Carlo draws of the marginal check
NUM_PROMPTS = 4             # prompts of the interactive sampler
FULL_TABLE = False          # True: DDIM Table 1 with S up to 1000 and TABLE_SAMPLES_FULL samples (long)
TABLE_STEPS = [10, 20, 50, 100]   # S of the default table (FULL_TABLE adds 1000)
TABLE_SAMPLES = 6           # samples per cell of the default table (FULL_TABLE: TABLE_SAMPLES_FULL)
TABLE_SAMPLES_FULL = 256
NOISE_SAMPLES = 32          # N: captions of the sampler study (every setting, each S of STUDY_STEPS)
STUDY_STEPS = [10, 50]      # S of the sampler study: a small S and a larger one
TABLE_GUIDANCE = 1.0        # 1: one UNet call per step (no unconditional branch)
REFERENCE_RENDERS = 128     # renders the Frechet distance compares with (FULL_TABLE: 512)
DEVICE = None               # None: cpu for shapes-tiny, the GPU for Stable Diffusion; or "cuda", "cpu", "mps"
THREADS = None              # CPU threads of torch (None: half the cores, at most 4)
OUT_DIR = None              # None: outputs/labs/02_generalized_posterior

# %% tags=["setup"]
# Derived values (computed from the parameters above: edit those, not these)
import os, time
from IPython.display import display
from diffusion_lab.widgets import common
from diffusion_lab.widgets.common import show, show_table

START = time.perf_counter()
QUICK = os.environ.get("DIFFUSION_LAB_QUICK") == "1"  # tests and CI: smaller experiments, same code
defaults = common.model_defaults(MODEL)
STEPS = int(STEPS or defaults["num_steps"])
GUIDANCE = float(GUIDANCE or defaults["guidance_scale"])
LAB = "02_generalized_posterior"
OUT = common.lab_out_dir(OUT_DIR, LAB)
common.reset_metrics(OUT)
common.configure_threads(THREADS)  # None: half the cores (1 on a 2-core laptop: faster than 2 when shared)
pipe = common.get_pipeline(MODEL, device=DEVICE)

from diffusion_lab.images import pil_to_tensor
from diffusion_lab.shapes import caption, random_scene
from diffusion_lab.widgets import posterior_panel as lab
if FULL_TABLE:
    TABLE_STEPS, TABLE_SAMPLES, REFERENCE_RENDERS = [10, 20, 50, 100, 1000], TABLE_SAMPLES_FULL, 512
if QUICK:
    TABLE_STEPS, TABLE_SAMPLES, REFERENCE_RENDERS = [10, 20], 4, 64
    NOISE_SAMPLES, STUDY_STEPS = 12, [10, 20]
if len(STUDY_STEPS) < 1 or sorted(STUDY_STEPS) != list(STUDY_STEPS) or NOISE_SAMPLES < 2 * TABLE_SAMPLES:
    raise ValueError(f"STUDY_STEPS = {STUDY_STEPS}, NOISE_SAMPLES = {NOISE_SAMPLES}: give the study's S in increasing "
                     f"order and at least two sets of TABLE_SAMPLES = {TABLE_SAMPLES} captions")
from diffusion_lab.studies import posterior as study
schedule = lab.schedule_of(pipe)
prompts = [caption(random_scene(SEED + i, num_objects=1)) for i in range(NUM_PROMPTS)]

# %%
# NBVAL_CHECK_OUTPUT
print(schedule)

# %% [markdown]
# ## 1. $\sigma_t$ along the subsequence
#
# For $0 \le \eta \le 1$, $\sigma_t^2 \le 1 - \bar\alpha_{t-1}$, so the "direction pointing to $x_t$" keeps a real
# coefficient. Sigma-hat exceeds that bound at the last steps, where $\bar\alpha_t < \bar\alpha_{t-1}^2$ (the noise
# variance more than doubles over one step: $t \le 201$ at $S = 10$, $t \le 41$ at $S = 50$, in the plots below):
# there it is **not** a member of the $q_\sigma$ family. The paper keeps the $\eta = 1$ mean at every step and only
# adds the larger noise. (The lecture's "$\sigma_t = \sqrt{\beta_t}$ gives DDPM" is this sigma-hat, DDPM's upper
# choice of variance; $\eta = 1$ gives DDPM's posterior variance $\tilde\beta_t$, its lower one. The tables call
# $\eta = 1$ "DDPM", as DDIM's Table 1 does.)

# %%
sigma_10, sigma_50 = lab.sigma_figure(schedule, 10), lab.sigma_figure(schedule, 50)
show(sigma_10, sigma_50)
common.save_outputs(OUT, {"sigma_S10": sigma_10, "sigma_S50": sigma_50})

# %% [markdown]
# ## 2. A numerical check: $q_\sigma$ keeps the marginals
#
# Take an image $x_0$ (a $16 \times 16$ copy, so that thousands of draws fit in memory), draw $x_t \sim q(x_t \mid x_0)$ many times, then
# $x_{t-1} \sim q_\sigma(x_{t-1} \mid x_t, x_0)$ with the **true** $x_0$. If the family keeps the marginals, the
# draws of $x_{t-1}$ have mean $\sqrt{\bar\alpha_{t-1}}\,x_0$ and standard deviation $\sqrt{1 - \bar\alpha_{t-1}}$
# whatever $\eta$ is. Sigma-hat is too noisy at every step: it keeps the $\eta = 1$ mean and adds more noise.
#
# This is an identity, not a tendency, but `MARGINAL_DRAWS` draws measure it only up to Monte Carlo error: each
# number is printed with its 95% bootstrap interval over the draws, and "off (SE)" says how many Monte Carlo standard
# errors the mean coefficient and the std lie from their targets. The check allows 4 standard errors per number
# (a correct sampler fails one of the 18 comparisons by chance with probability about 0.1%, whatever `SEED` is), and
# asks sigma-hat's std to lie above its target by more than that
# (`diffusion_lab.studies.posterior.marginal_study`). `python pipelines/claims.py --labs 2` ran this check at
# `SEED` = 0, 1, ..., 63: both parts pass at all 64 (95% CI 94-100%).

# %%
# NBVAL_CHECK_OUTPUT

image, _, _ = common.source_scene(pipe, SEED)
x_0 = pil_to_tensor(image.resize((16, 16)))  # any x_0 will do: a 16x16 copy of an image, in [-1, 1]
marginals = study.marginal_study(schedule, x_0, num_steps=10, num_draws=MARGINAL_DRAWS, seed=SEED)
show_table(common.markdown_table(marginals, digits=4))
common.save_outputs(OUT, metrics={"marginal_check": marginals})
for claim in study.marginal_claims(marginals):
    print(f"{'holds' if claim['holds'] else 'DOES NOT HOLD'}: {claim['claim']}")
    assert claim["holds"], f"{claim['claim']}: {claim['evidence']}"

# %% [markdown]
# ## 3. DDIM's Table 1 in the shapes world
#
# The paper compares samplers by FID: the Fréchet distance between Gaussians fitted to Inception features of
# samples and of real images,
# $\mathrm{FD} = \lVert \mu_g - \mu_r \rVert^2 + \operatorname{Tr}\!\big(\Sigma_g + \Sigma_r - 2(\Sigma_g\Sigma_r)^{1/2}\big)$
# (*implemented by* `diffusion_lab.quality.frechet_distance`).
# Here the features are the shapes world's own 16 numbers per image (`diffusion_lab.quality.shapes_features`:
# palette shares, off-palette pixels, edge sharpness, high-frequency noise, object count and template match — see
# its docstring), computed on samples and on renders; lower is better. Its scale is this project's, **not** CIFAR10's:
# compare the *pattern* across the table with the paper's row under it. The analyzer's attribute accuracy
# (shape, colour, size, background against the caption) is a second, readable measure.
#
# Every cell samples the same captions from the same $x_T$, with the same seed for the added noise, at guidance
# `TABLE_GUIDANCE`. The default run is small (`TABLE_SAMPLES` samples, $S \le 100$: two minutes on a laptop CPU);
# `FULL_TABLE = True` adds $S = 1000$ (every timestep, $999, \dots, 0$) and uses `TABLE_SAMPLES_FULL` samples:
# about 5,900 sequential UNet calls per batch of samples, hours on a 2-core CPU, minutes on a GPU
# (`DEVICE = "cuda"`, or `python pipelines/run_labs.py --labs 02 --full-table -p DEVICE cuda`). The *renders* row is
# the same number of real renders against the reference: how large the FD of a few samples is when nothing is
# wrong with them. Cells at or below it cannot be told apart from data.

# %%
# NBVAL_IGNORE_OUTPUT

table = lab.table1(pipe, TABLE_STEPS, num_samples=TABLE_SAMPLES, guidance_scale=TABLE_GUIDANCE, seed=SEED,
                   reference_count=REFERENCE_RENDERS)
print(f"{len(TABLE_STEPS) * len(lab.SETTINGS)} cells of {TABLE_SAMPLES} samples in {table['seconds']:.0f} s")

# %% [markdown]
# ### Samples for $\eta$ and $S$, side by side
#
# The first samples of every cell: one row per sampler setting, one block per $S$. Look for the noise that
# sigma-hat adds at few steps and the remaining steps do not remove; for $\eta \le 1$ the shapes world shows no
# such difference (measured below).

# %%
table_samples = lab.table1_samples_figure(table)
show(table_samples)

# %% [markdown]
# ### The table: Fréchet distance per cell, the paper's CIFAR10 FID under each row

# %%
show_table(lab.table1_markdown(table))
table_plot = lab.table1_figure(table)
show(table_plot)

# %% [markdown]
# Analyzer accuracy (mean of shape, colour, size and background) per cell:

# %%
show_table(lab.accuracy_markdown(table))
common.save_outputs(OUT, {"table1": table_plot, "table1_samples": table_samples},
                    {"table1": {"steps": table["steps"], "samples": table["num_samples"], "fd": table["fd"],
                                "data_fd": table["data_fd"], "accuracy": table["accuracy"]}})

# %% [markdown]
# ### What the shapes world can and cannot show: rates over samples
#
# The table above is **one draw**: `TABLE_SAMPLES` captions and one $x_T$ chosen by `SEED`. A Fréchet distance of a
# few samples is mostly noise, so the study below asks how often each of the paper's orderings holds, over many
# draws (`diffusion_lab.studies.posterior.sampler_study`): `NOISE_SAMPLES` captions (from `SEED`) sampled with every
# setting, at each $S$ of `STUDY_STEPS`, from the same $x_T$. Two measures:
#
# - per **image**, the noise a sampler leaves (`quality.high_frequency_energy`: the std of an image minus its 3x3
#   median, in 0-255 pixel values divided by 50; 0 for a clean render). Settings are compared **paired**, image by
#   image (same caption, same $x_T$): means with 95% bootstrap intervals, rates with 95% Wilson intervals;
# - per **set** of `TABLE_SAMPLES` images (as many as the table above), the Fréchet distance: how often it ranks
#   DDIM ahead of DDPM and sigma-hat last, as the paper's row at $S = 10$ does.
#
# What `python pipelines/claims.py --labs 2` measured at N = 64 captions (seed 0; sets of 6):
# at $S = 10$ sigma-hat leaves 0.0153 more noise than $\eta = 1$ (paired mean, 95% CI 0.0131 to 0.0177; sigma-hat
# 0.0450 against 0.0288-0.0297 for the four $\eta$) and is the noisiest of the five in 94% (60/64; 95% CI 85-98%) of
# the images; its excess falls to 0.0011 (0.0006 to 0.0014) at $S = 50$ and 0.0005 (0.0003 to 0.0007) at $S = 100$.
# The four $\eta$ stay within 0.0019 of each other (the far end of the largest paired difference's interval at
# $S = 10$): DDIM's image is cleaner than DDPM's in 56% (36/64; 95% CI 44-68%) of the images, a coin flip, and the
# paper's whole order $\eta = 0 < 0.2 < 0.5 < 1$ holds in 6% (4/64; 95% CI 2-15%), about what chance gives
# (1/24 = 4%). The Fréchet distance of a set of 6 ranks DDIM ahead of DDPM in 20% (2/10 sets; 95% CI 6-51%) and
# sigma-hat last in 70% (7/10; 95% CI 40-89%) at $S = 10$: a table of 6 samples ranks neither reliably.
#
# So what the cell checks, as statements about the sample and not one draw: **at small $S$ sigma-hat leaves more
# noise than every $\eta$** (each paired gap's interval above 0), as in the paper's catastrophic sigma-hat row;
# **the four $\eta$ are close**, not spread as on CIFAR10 (any two differ by less than half of sigma-hat's gap):
# flat shapes leave nothing for the extra noise of $\eta = 1$ to blur that the remaining steps do not restore, while
# CIFAR10's textures do, so the ordering is a property of the data as much as of the sampler; and **sigma-hat's
# excess shrinks with $S$**, the paper's trend towards its $S = 1000$ row. A QUICK run (12 captions) checks the
# estimates only. The lines "this draw is one of the ..." place the table above among the study's sets.

# %%
sampler_study = study.sampler_study(pipe, NOISE_SAMPLES, STUDY_STEPS, seed=SEED, set_size=TABLE_SAMPLES,
                                    reference_count=REFERENCE_RENDERS)
show_table(common.markdown_table(study.noise_rows(sampler_study)))
show_table(common.markdown_table(study.order_rows(sampler_study)))
common.save_outputs(OUT, metrics={"sampler_study": {
    "n": sampler_study["n"], "set_size": sampler_study["set_size"], "sets": sampler_study["sets"],
    "noise": {s: {k: v.as_dict() for k, v in m.items()} for s, m in sampler_study["noise"].items()},
    "gap": {s: {k: v.as_dict() for k, v in m.items()} for s, m in sampler_study["gap"].items()},
    "fd_order": {s: {k: v.as_dict() for k, v in m.items()} for s, m in sampler_study["fd_order"].items()}}})
for line in study.example_against_study(sampler_study, table):
    print(line)
for claim in study.sampler_claims(sampler_study, intervals=not QUICK):
    print(f"{'holds' if claim['holds'] else 'DOES NOT HOLD'}: {claim['claim']} ({claim['evidence']})")
    assert claim["holds"], (f"{claim['claim']}: {claim['evidence']}. The claim is about the sample, not one draw: "
                            "try a larger NOISE_SAMPLES")

# %% [markdown]
# ### Try it: $\eta$, sigma-hat and $S$ (press *Run sampler*)

# %%
# NBVAL_IGNORE_OUTPUT

if INTERACTIVE:
    print("\n".join(prompts))
    display(lab.SamplerPanel(pipe, prompts, num_steps=20, guidance_scale=GUIDANCE, seed=SEED))

# %% [markdown]
# **Questions.** (1) The paper's CIFAR10 rows (under the table) do *not* say that DDIM at $S = 10$ beats DDPM at
# $S = 100$: 13.36 against 5.78. What they say is that at the **same** small $S$ DDIM is far better (13.36 against
# 41.07 at $S = 10$), and that DDIM at $S = 20$ (6.84) comes close to DDPM at $S = 100$ with a fifth of the steps.
# Which of these two statements does the shapes-world table reproduce, given its error bars? (2) On CIFAR10
# sigma-hat is catastrophic at small $S$ and the best at $S = 1000$ (the paper's Table 1: 3.17 against 4.04 for
# $\eta = 0$). How much larger than $\sigma_t(\eta = 1)$ is $\hat\sigma_t$ in the plot above, for this model's
# schedule (scaled linear, $\beta_t \le 0.012$, in latent space)? Compute the same ratio for the paper's schedule
# with `posterior.sigma_hat` and `posterior.sigma_from_eta` on
# `schedules.NoiseSchedule.create("linear", beta_start=1e-4, beta_end=0.02)` (in pixel space). (3) What does the
# *renders* row tell you about comparing FDs of a few samples?

# %% [markdown]
# ## Exercises (checked automatically)
#
# Implement the lecture's pieces yourself. Write your code between the lines where the student version says
# `# YOUR CODE HERE` (delete the `raise NotImplementedError()`), then run the **check** cell under it: it compares your
# function with the library's reference implementation (named in each exercise) on seeded inputs and says what is
# wrong if it differs. Use `torch` only; do not call the reference function itself. The same checks, plus a few
# hidden ones, grade your submission (see STUDENTS.md).

# %% tags=["exercises"]
import torch
from diffusion_lab.course import checks

# %% [markdown]
# ### Exercise 2.1 — $\sigma_t$ from $\eta$
#
# $\sigma_t(\eta) = \eta \sqrt{(1 - \bar\alpha_{t-1})/(1 - \bar\alpha_t)}\,\sqrt{1 - \bar\alpha_t/\bar\alpha_{t-1}}$.
# Arguments are floats or 0-dim tensors; return a tensor. Reference: `diffusion_lab.posterior.sigma_from_eta`.

# %% nbgrader={"grade": false, "grade_id": "ex2_1_sigma_from_eta", "locked": false, "schema_version": 3, "solution": true}
def sigma_from_eta(alpha_bar_t, alpha_bar_prev, eta):
    ### BEGIN SOLUTION
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    alpha_bar_prev = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2_1_check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_sigma_from_eta(sigma_from_eta)
# mistake: alpha_bar_t and alpha_bar_{t-1} are swapped
# mistake: the square root is missing: sigma_t is a standard deviation
# mistake: eta is squared
# mistake: the square root is of 1 - alpha_bar_t / alpha_bar_{t-1}, not of the ratio alone

# %% [markdown]
# ### Exercise 2.2 — sigma-hat
#
# $\hat\sigma_t = \sqrt{1 - \bar\alpha_t / \bar\alpha_{t-1}}$ (the lecture's $\sqrt{\beta_t}$ over a subsequence).
# Reference: `diffusion_lab.posterior.sigma_hat`.

# %% nbgrader={"grade": false, "grade_id": "ex2_2_sigma_hat", "locked": false, "schema_version": 3, "solution": true}
def sigma_hat(alpha_bar_t, alpha_bar_prev):
    ### BEGIN SOLUTION
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    alpha_bar_prev = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    return (1 - alpha_bar_t / alpha_bar_prev).sqrt()
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2_2_check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_sigma_hat(sigma_hat)
# mistake: that is sigma_t(eta=1), DDPM's posterior std
# mistake: the square root is missing
# mistake: the ratio is upside down
# mistake: the square root is of the whole 1 - alpha_bar_t / alpha_bar_{t-1}, not of the ratio alone
### BEGIN HIDDEN TESTS
@checks.exercise_check
def check_sigma_hat_is_the_eta_1_bound(student):
    """sigma-hat >= sigma_t(eta = 1) on a whole schedule, with equality nowhere but where alpha_bar_{t-1} = 1."""
    from diffusion_lab.posterior import sigma_from_eta, sigma_hat as reference
    from diffusion_lab.schedules import NoiseSchedule
    schedule = NoiseSchedule.create("linear")
    timesteps = schedule.timesteps(20).tolist()
    for t, t_prev in zip(timesteps, timesteps[1:]):
        a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        checks.compare("sigma_hat", checks.call_student("sigma_hat", student, a_t, a_prev), reference(a_t, a_prev),
                       what=f" on the linear schedule (t={t} -> {t_prev})")
        assert float(reference(a_t, a_prev)) >= float(sigma_from_eta(a_t, a_prev, 1.0))
    return checks.passed("hidden: sigma-hat is right along a linear schedule of 20 steps")
check_sigma_hat_is_the_eta_1_bound(sigma_hat)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2.3 — one step of the generalized sampler
#
# For an $\epsilon$-predicting network's output `epsilon` $= \hat\epsilon_\theta(x_t, t)$, return
# $x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat x_0 + \sqrt{1 - \bar\alpha_{t-1} - \sigma_t^2}\,\hat\epsilon + \sigma_t\,
# \epsilon_t$ with $\hat x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$ and $\epsilon_t$ = `noise`
# ($\sigma_t = 0$: DDIM). Reference: `diffusion_lab.posterior.generalized_posterior_step`. The hidden check also
# samples it many times with the true $x_0$ and measures the marginal it keeps.

# %% nbgrader={"grade": false, "grade_id": "ex2_3_ddim_step", "locked": false, "schema_version": 3, "solution": true}
def ddim_step(x_t, epsilon, alpha_bar_t, alpha_bar_prev, sigma_t, noise):
    """x_t, epsilon, noise: (B, C, H, W); alpha_bar_t, alpha_bar_prev, sigma_t: 0-dim tensors -> x_(t-1)."""
    ### BEGIN SOLUTION
    alpha_bar_t, alpha_bar_prev, sigma_t = (torch.as_tensor(v, dtype=torch.float64) for v in (alpha_bar_t, alpha_bar_prev, sigma_t))
    x0_hat = (x_t - (1 - alpha_bar_t).sqrt() * epsilon) / alpha_bar_t.sqrt()
    direction = (1 - alpha_bar_prev - sigma_t**2).clamp(min=0).sqrt() * epsilon
    return (alpha_bar_prev.sqrt() * x0_hat + direction + sigma_t * noise).to(x_t.dtype)
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2_3_check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_ddim_step(ddim_step)
# mistake: the direction pointing to x_t is sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps, not sqrt(alpha_bar_{t-1}) eps
# mistake: predicted x_0 is scaled by sqrt(alpha_bar_{t-1}), not by alpha_bar_{t-1}
# mistake: predicted x_0 uses the per-step alpha_t
# mistake: the noise term sigma_t * noise is missing
### BEGIN HIDDEN TESTS
@checks.exercise_check
def check_ddim_step_marginals(student, num_draws=4000):
    """With the TRUE x_0 (eps_hat = the eps that made x_t), draws of x_{t-1} at eta = 0.5 keep the marginal
    q(x_{t-1} | x_0): mean sqrt(alpha_bar_{t-1}) x_0, std sqrt(1 - alpha_bar_{t-1}) (the lecture's claim)."""
    from diffusion_lab.posterior import forward_marginal_mean_std, forward_marginal_sample, sigma_from_eta
    from diffusion_lab.schedules import NoiseSchedule
    schedule = NoiseSchedule.create("scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False)
    generator = torch.Generator().manual_seed(7)
    x_0 = torch.randn(1, 3, 4, 4, generator=generator).expand(num_draws, -1, -1, -1)
    a_t, a_prev = schedule.alpha_bar(601), schedule.alpha_bar(401)
    epsilon = torch.randn(x_0.shape, generator=generator)
    x_t = forward_marginal_sample(x_0, a_t, noise=epsilon)
    noise = torch.randn(x_0.shape, generator=generator)
    draws = checks.as_tensor("ddim_step", checks.call_student(
        "ddim_step", student, x_t, epsilon, a_t, a_prev, sigma_from_eta(a_t, a_prev, 0.5), noise), x_0)
    mean, std = forward_marginal_mean_std(x_0[:1], a_prev)
    bound = 5 / num_draws**0.5
    mean_error, std_error = float((draws.mean(0) - mean[0]).abs().max()), float((draws.std(0) - std).abs().max())
    if mean_error > bound or std_error > bound:
        raise checks.ExerciseFailed(f"ddim_step: with the true x_0, {num_draws} draws of x_(t-1) should have mean "
                                    f"sqrt(alpha_bar_(t-1)) x_0 and std {float(std):.3f}; off by {mean_error:.3f} "
                                    f"(mean) and {std_error:.3f} (std), allowed {bound:.3f}")
    return checks.passed(f"hidden: {num_draws} draws of your x_(t-1) keep the marginal q(x_(t-1) | x_0)")
check_ddim_step_marginals(ddim_step)
### END HIDDEN TESTS

# %% tags=["finish"]
# NBVAL_IGNORE_OUTPUT
seconds = time.perf_counter() - START
common.save_outputs(OUT, metrics={"seconds": seconds, "model": MODEL, "quick": QUICK})
print(f"lab ran in {seconds:.0f} s; figures and metrics.json are in OUT_DIR ({OUT.name})")

"""Write the four lab notebooks (labs/0*.ipynb) from this reviewable source.

    python labs/build_labs.py [02 ...]   # rewrite the notebooks (or only some) WITHOUT outputs
    python pipelines/run_labs.py --in-place   # then execute them and store outputs for nbval

Conventions of every lab (see the README of labs/ in the docstring of pipelines/run_labs.py):
- a cell tagged `parameters` (papermill) with INTERACTIVE, MODEL, SEED, STEPS, GUIDANCE, the sizes of the
  experiments and OUT_DIR; derived values are computed in the next cell;
- every code cell is short and only calls diffusion_lab (experiments and panels live in diffusion_lab/widgets/);
- widget and timing cells start with `# NBVAL_IGNORE_OUTPUT`; cells whose printed numbers do not depend on the
  network (schedules, the Monte Carlo check) start with `# NBVAL_CHECK_OUTPUT` (the labs are checked with
  nbval-lax, which compares only those);
- INTERACTIVE=False displays no widget; the same computations run and figures + metrics.json go to OUT_DIR.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

LABS = Path(__file__).resolve().parent
IGNORE = "# NBVAL_IGNORE_OUTPUT\n"
CHECK = "# NBVAL_CHECK_OUTPUT\n"


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(source: str, tags: tuple[str, ...] = ()):
    cell = new_code_cell(source.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    return nb


HOW_TO = """
**How to use this lab.** Run all cells (*Run > Run All Cells*). The panels marked *Try it* have sliders that
update when you release them and **Run** buttons for the expensive work; pipelines and inversions are cached, so a
second edit of the same image is quick. Headless (`INTERACTIVE = False`, e.g. `python pipelines/run_labs.py`) no
panel is shown, the same experiments run, and the figures plus a `metrics.json` are written to `OUT_DIR`.
Every computation is a call into `diffusion_lab`; read the functions' docstrings (`help(...)`) for the details.
"""

SETUP_COMMON = """
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
OUT = common.lab_out_dir(OUT_DIR, LAB)
common.reset_metrics(OUT)
common.configure_threads(THREADS)  # None: half the cores (1 on a 2-core laptop: faster than 2 when shared)
pipe = common.get_pipeline(MODEL, device=DEVICE)
"""

FINISH = """
# NBVAL_IGNORE_OUTPUT
seconds = time.perf_counter() - START
common.save_outputs(OUT, metrics={"seconds": seconds, "model": MODEL, "quick": QUICK})
print(f"lab ran in {seconds:.0f} s; figures and metrics.json are in {OUT}")
"""


# ---------------------------------------------------------------------------------------------------------------
# Lab 1: naive noising
# ---------------------------------------------------------------------------------------------------------------


def lab1():
    return notebook([
        md(r"""
# Lab 1 — Naive image editing by noising and denoising

*Deep Generative Models: Image Editing with Diffusion Models* — the lecture's first idea:
instead of starting from pure noise, run the **forward process** on a fixed image up to some $t$, then the
**reverse process** with a new prompt. How much noise to add is a trade-off: *"depending on how much noise is
added, we can change a lot of features in the image or not enough features"*, and noising then denoising does
**not** give $x_0$ back.

You will
1. look at the forward process $q(x_t \mid x_0)$ on a real image (a rendered scene of the shapes world);
2. edit it naively at several noise levels and measure the trade-off;
3. see that noising then denoising with the *same* prompt does not return the image.
""" + HOW_TO),
        code('''
# Parameters (papermill can override every name in this cell)
INTERACTIVE = True          # show the panels; False: headless, figures + metrics.json go to OUT_DIR
MODEL = "shapes-tiny"       # built-in model; on a GPU e.g. "stable-diffusion-v1-5/stable-diffusion-v1-5"
SEED = 0                    # noise seed
STEPS = None                # DDIM steps S of the reverse process (None: the model's default, 50)
GUIDANCE = None             # classifier-free guidance w (None: 5.0 for shapes-tiny, 7.5 for Stable Diffusion)
OBJECT = {"shape": "circle", "colour": "red", "size": "large"}   # the object of the "real" image
BACKGROUND = "gray"
SCENE_SEED = 3              # where the object is placed
EDIT_KIND = "shape"         # the edit asked for in the new prompt: shape, colour, size or background
EDIT_VALUE = "square"
FORWARD_T = [0, 100, 250, 500, 750, 999]     # noise levels shown of the forward process
STRENGTHS = [0.2, 0.4, 0.6, 0.8, 1.0]       # fractions of the S steps re-run after noising
NUM_SEEDS = 3               # noise draws per strength
DEVICE = None               # None: cpu for shapes-tiny, the GPU for Stable Diffusion; or "cuda", "cpu", "mps"
THREADS = None              # CPU threads of torch (None: half the cores, at most 4)
OUT_DIR = None              # None: outputs/labs/01_naive_noising
''', tags=("parameters",)),
        code(SETUP_COMMON.replace("OUT = ", 'LAB = "01_naive_noising"\nOUT = ') + '''
from diffusion_lab.shapes import caption, edit_scene
from diffusion_lab.widgets import naive_noising as lab
if QUICK:
    STRENGTHS, NUM_SEEDS, STEPS = [0.3, 0.7, 1.0], 2, 20
image, source_prompt, scene = common.source_scene(pipe, SCENE_SEED, objects=[OBJECT], background=BACKGROUND)
target_scene = edit_scene(scene, EDIT_KIND, EDIT_VALUE).target
target_prompt = caption(target_scene)
'''),
        code(CHECK + '''
print("input caption:", source_prompt)
print("edit prompt:  ", target_prompt)
'''),
        code('show(image)'),
        md(r"""
## 1. The forward process on a real image

The forward process adds Gaussian noise; its marginal at any $t$ is known in closed form,

$$q(x_t \mid x_0) = \mathcal{N}\!\left(\sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\right),
\qquad x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon,\quad \epsilon \sim \mathcal{N}(0, I),$$

with $\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)$ decreasing from about 1 to about 0. (The slides write
$\alpha_t$ for this cumulative product; the code calls it `alpha_bar`.) Stable Diffusion and `shapes-tiny` are
*latent* diffusion models: the process runs on the VAE latents $z_0 = E(x_0)$, not on pixels. Below, the same
$\epsilon$-recipe on the pixels (top) and on the latents, decoded so we can look at them (bottom).
"""),
        code('show(lab.noise_levels_figure(pipe))'),
        code('''
strip, alpha_bars = lab.forward_process_strip(pipe, image, FORWARD_T, seed=SEED)
show(strip)
common.save_outputs(OUT, {"forward_process": strip})
'''),
        code(CHECK + '''
for t, alpha_bar in alpha_bars.items():
    print(f"t={t:4d}  alpha_bar_t={alpha_bar:.4f}  signal sqrt(alpha_bar_t)={alpha_bar ** 0.5:.3f}")
'''),
        md("### Try it: move $t$ (release the slider to update)"),
        code(IGNORE + '''
if INTERACTIVE:
    display(lab.ForwardProcessPanel(pipe, image, t=250, seed=SEED))
'''),
        md(r"""
## 2. Naive editing: noise to $t$, denoise with a new prompt

With *strength* $s \in [0, 1]$ we noise $z_0$ to the timestep where the last $\lfloor sS \rfloor$ of the $S$
DDIM steps begin, and run only those steps with the **new** prompt (SDEdit; `diffusers`' img2img). Small $s$:
the sampler starts close to the image and cannot change much. Large $s$: it follows the prompt but has forgotten
the image. Each row below is one draw of the noise $\epsilon$.
"""),
        code('''
sweep = lab.strength_sweep(pipe, image, source_prompt, target_prompt, STRENGTHS, NUM_SEEDS, STEPS, GUIDANCE,
                           SEED, source_scene=scene, target_scene=target_scene)
edits = lab.sweep_figure(image, sweep, "edits")
show(edits)
'''),
        md(r"""
The analyzer of the shapes world reads every edited image back into a scene, so the trade-off can be measured:
*edit done* = the object has the new attribute; *layout kept* = it is still where it was.
"""),
        code('''
tradeoff = lab.tradeoff_figure(sweep)
show(tradeoff)
show_table(lab.sweep_table(sweep))
common.save_outputs(OUT, {"naive_edits": edits, "tradeoff": tradeoff}, {"strength_sweep": sweep["rows"]})
'''),
        md(r"""
## 3. Noising then denoising does not give the image back

Same experiment with the **source** prompt. If the reverse process inverted the forward process, every strength
would return the input. It does not: the noise $\epsilon$ is random and the reverse process is a different random
process — the lecture's *randomness in the model* problem — and the error grows with the noise level. (The VAE
round trip alone costs a little too; lab 3 measures it.) Labs 2 and 3 fix this with a deterministic sampler
(DDIM, $\sigma_t = 0$) and its inversion.
"""),
        code('''
round_trips = lab.sweep_figure(image, sweep, "round_trips")
show(round_trips)
common.save_outputs(OUT, {"round_trips": round_trips})
'''),
        md("### Try it: strength, prompt and noise seed"),
        code(IGNORE + '''
if INTERACTIVE:
    display(lab.NaiveEditPanel(pipe, image, source_prompt, target_prompt, strength=0.6, num_steps=STEPS,
                               guidance_scale=GUIDANCE, seed=SEED))
'''),
        md(r"""
**Questions.** (1) At which strength does the edit first succeed, and is the object still where it was?
(2) Why does the round trip at strength 1 look like a *different* image with the same caption?
(3) The slides call the reverse process slow because it needs $T$ sequential steps; how many UNet calls did one
edit at strength $s$ cost here?
"""),
        code(FINISH),
    ])


# ---------------------------------------------------------------------------------------------------------------
# Lab 2: the generalized posterior
# ---------------------------------------------------------------------------------------------------------------


def lab2():
    return notebook([
        md(r"""
# Lab 2 — The generalized posterior: $\sigma_t$, $\eta$, and faster sampling (DDIM)

The lecture generalizes DDPM's Markovian forward process to a family of non-Markovian processes with the same
marginals $q(x_t \mid x_0)$, indexed by $\sigma_t \ge 0$:

$$q_\sigma(x_{t-1} \mid x_t, x_0) = \mathcal{N}\!\left(\sqrt{\bar\alpha_{t-1}}\, x_0
+ \sqrt{1 - \bar\alpha_{t-1} - \sigma_t^2}\;\frac{x_t - \sqrt{\bar\alpha_t}\, x_0}{\sqrt{1 - \bar\alpha_t}},\ \sigma_t^2 I\right).$$

Sampling replaces $x_0$ by the network's prediction $\hat x_\theta(x_t, t)$:

$$x_{t-1} = \underbrace{\sqrt{\bar\alpha_{t-1}}\, \hat x_\theta(x_t, t)}_{\text{predicted } x_0}
+ \underbrace{\sqrt{1 - \bar\alpha_{t-1} - \sigma_t^2}\; \frac{x_t - \sqrt{\bar\alpha_t}\,\hat x_\theta(x_t, t)}{\sqrt{1 - \bar\alpha_t}}}_{\text{direction pointing to } x_t}
+ \underbrace{\sigma_t \epsilon_t}_{\text{random noise}}.$$

DDIM writes $\sigma_t(\eta) = \eta \sqrt{\tfrac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}}\sqrt{1 - \tfrac{\bar\alpha_t}{\bar\alpha_{t-1}}}$:
$\eta = 0$ is **DDIM** (deterministic), $\eta = 1$ is DDPM's posterior. The larger
$\hat\sigma_t = \sqrt{1 - \bar\alpha_t / \bar\alpha_{t-1}}$ (the lecture's "$\sigma_t = \sqrt{\beta_t}$") is the paper's
*sigma-hat* row. Any subsequence $\tau_1 < \dots < \tau_S$ of the $T$ steps can be sampled: $S \ll T$ is fast.

You will check numerically that the marginals are kept, then reproduce the DDIM paper's **Table 1** in the
shapes world, with its samples for every $\eta$ and $S$ side by side.
""" + HOW_TO),
        code('''
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
TABLE_GUIDANCE = 1.0        # 1: one UNet call per step (no unconditional branch)
REFERENCE_RENDERS = 128     # renders the Frechet distance compares with (FULL_TABLE: 512)
DEVICE = None               # None: cpu for shapes-tiny, the GPU for Stable Diffusion; or "cuda", "cpu", "mps"
THREADS = None              # CPU threads of torch (None: half the cores, at most 4)
OUT_DIR = None              # None: outputs/labs/02_generalized_posterior
''', tags=("parameters",)),
        code(SETUP_COMMON.replace("OUT = ", 'LAB = "02_generalized_posterior"\nOUT = ') + '''
from diffusion_lab.images import pil_to_tensor
from diffusion_lab.shapes import caption, random_scene
from diffusion_lab.widgets import posterior as lab
if FULL_TABLE:
    TABLE_STEPS, TABLE_SAMPLES, REFERENCE_RENDERS = [10, 20, 50, 100, 1000], TABLE_SAMPLES_FULL, 512
if QUICK:
    TABLE_STEPS, TABLE_SAMPLES, REFERENCE_RENDERS = [10, 20], 4, 64
schedule = lab.schedule_of(pipe)
prompts = [caption(random_scene(SEED + i, num_objects=1)) for i in range(NUM_PROMPTS)]
'''),
        code(CHECK + 'print(schedule)'),
        md(r"""
## 1. $\sigma_t$ along the subsequence

For $0 \le \eta \le 1$, $\sigma_t^2 \le 1 - \bar\alpha_{t-1}$, so the "direction pointing to $x_t$" keeps a real
coefficient. Sigma-hat exceeds that bound at large skips (small $S$): it is **not** a member of the $q_\sigma$
family; the paper keeps the $\eta = 1$ mean and only adds the larger noise.
"""),
        code('''
sigma_10, sigma_50 = lab.sigma_figure(schedule, 10), lab.sigma_figure(schedule, 50)
show(sigma_10, sigma_50)
common.save_outputs(OUT, {"sigma_S10": sigma_10, "sigma_S50": sigma_50})
'''),
        md(r"""
## 2. A numerical check: $q_\sigma$ keeps the marginals

Take an image $x_0$ (a $16 \times 16$ copy, so that thousands of draws fit in memory), draw $x_t \sim q(x_t \mid x_0)$ many times, then
$x_{t-1} \sim q_\sigma(x_{t-1} \mid x_t, x_0)$ with the **true** $x_0$. If the family keeps the marginals, the
draws of $x_{t-1}$ have mean $\sqrt{\bar\alpha_{t-1}}\,x_0$ and standard deviation $\sqrt{1 - \bar\alpha_{t-1}}$
whatever $\eta$ is. Sigma-hat is too noisy where it leaves the family.
"""),
        code(CHECK + '''
image, _, _ = common.source_scene(pipe, SEED)
x_0 = pil_to_tensor(image.resize((16, 16)))  # any x_0 will do: a 16x16 copy of an image, in [-1, 1]
marginals = lab.marginal_check(schedule, x_0, num_steps=10, num_draws=MARGINAL_DRAWS, seed=SEED)
show_table(common.markdown_table(marginals))
common.save_outputs(OUT, metrics={"marginal_check": marginals})
'''),
        md(r"""
## 3. DDIM's Table 1 in the shapes world

The paper compares samplers by FID: the Fréchet distance between Gaussians fitted to Inception features of
samples and of real images,
$\mathrm{FD} = \lVert \mu_g - \mu_r \rVert^2 + \operatorname{Tr}\!\big(\Sigma_g + \Sigma_r - 2(\Sigma_g\Sigma_r)^{1/2}\big)$.
Here the features are the shapes world's own 16 numbers per image (`diffusion_lab.quality.shapes_features`:
palette shares, off-palette pixels, edge sharpness, high-frequency noise, object count and template match — see
its docstring), computed on samples and on renders; lower is better. Its scale is this project's, **not** CIFAR10's:
compare the *pattern* across the table with the paper's row under it. The analyzer's attribute accuracy
(shape, colour, size, background against the caption) is a second, readable measure.

Every cell samples the same captions from the same $x_T$, with the same seed for the added noise, at guidance
`TABLE_GUIDANCE`. The default run is small (`TABLE_SAMPLES` samples, $S \le 100$: two minutes on a laptop CPU);
`FULL_TABLE = True` adds $S = 1000$ (every timestep, $999, \dots, 0$) and uses `TABLE_SAMPLES_FULL` samples:
about 5,900 sequential UNet calls per batch of samples, hours on a 2-core CPU, minutes on a GPU
(`DEVICE = "cuda"`, or `python pipelines/run_labs.py --labs 02 --full-table -p DEVICE cuda`). With few samples the FD has a floor (the
*renders* row: the same number of renders against the reference).
"""),
        code(IGNORE + '''
table = lab.table1(pipe, TABLE_STEPS, num_samples=TABLE_SAMPLES, guidance_scale=TABLE_GUIDANCE, seed=SEED,
                   reference_count=REFERENCE_RENDERS)
print(f"{len(TABLE_STEPS) * len(lab.SETTINGS)} cells of {TABLE_SAMPLES} samples in {table['seconds']:.0f} s")
'''),
        md(r"""
### Samples for $\eta$ and $S$, side by side

The first samples of every cell: one row per sampler setting, one block per $S$. With few steps, the noise added
by large $\eta$ (and more by sigma-hat) is not removed again by the remaining steps.
"""),
        code('''
table_samples = lab.table1_samples_figure(table)
show(table_samples)
'''),
        md("### The table: Fréchet distance per cell, the paper's CIFAR10 FID under each row"),
        code('''
show_table(lab.table1_markdown(table))
table_plot = lab.table1_figure(table)
show(table_plot)
'''),
        md("Analyzer accuracy (mean of shape, colour, size and background) per cell:"),
        code('''
show_table(lab.accuracy_markdown(table))
common.save_outputs(OUT, {"table1": table_plot, "table1_samples": table_samples},
                    {"table1": {"steps": table["steps"], "samples": table["num_samples"], "fd": table["fd"],
                                "data_fd": table["data_fd"], "accuracy": table["accuracy"]}})
'''),
        md("### Try it: $\\eta$, sigma-hat and $S$ (press *Run sampler*)"),
        code(IGNORE + '''
if INTERACTIVE:
    print("\\n".join(prompts))
    display(lab.SamplerPanel(pipe, prompts, num_steps=20, guidance_scale=GUIDANCE, seed=SEED))
'''),
        md(r"""
**Questions.** (1) In the paper, DDIM ($\eta = 0$) with $S = 10$ beats DDPM ($\eta = 1$) at $S = 100$. Does the
shapes world agree, within the noise of a small table? (2) On CIFAR10 sigma-hat is catastrophic at small $S$ and
the best at $S = 1000$. How much larger than $\sigma_t(\eta = 1)$ is $\hat\sigma_t$ in the plot above, for this
model's schedule (scaled linear, $\beta_t \le 0.012$, in latent space) compared with the paper's (linear,
$\beta_t \le 0.02$, in pixel space)? (3) What does the *renders* row tell you about comparing FDs of a few samples?
"""),
        code(FINISH),
    ])


# ---------------------------------------------------------------------------------------------------------------
# Lab 3: DDIM inversion
# ---------------------------------------------------------------------------------------------------------------


def lab3():
    return notebook([
        md(r"""
# Lab 3 — DDIM inversion: encode, decode, and the repair under guidance

For editing we need **exact inversion**: the $x_T$ from which sampling gives our image back. DDIM's sampler with
$\sigma_t = 0$ is deterministic,

$$x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat x_\theta(x_t, t) + \sqrt{1 - \bar\alpha_{t-1}}\;\hat\epsilon_\theta(x_t, t),
\qquad \hat x_\theta = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\hat\epsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}},$$

so it can be run **backwards** (encode), from $x_{t-1}$ up to $x_t$, if we use $\hat\epsilon_\theta(x_{t-1}, t)$ in
place of the unknown $\hat\epsilon_\theta(x_t, t)$. Decoding is ordinary DDIM sampling. The approximation is good for
small steps and without guidance; with classifier-free guidance
$\hat\epsilon = \hat\epsilon_\varnothing + w(\hat\epsilon_c - \hat\epsilon_\varnothing)$, $w = 7.5$, its errors
grow. **Null-text inversion** inverts at $w = 1$ (the *pivot*) and optimises the unconditional embedding
$\varnothing_t$ of each step so that guided sampling retraces the pivot; **negative-prompt inversion** simply uses
the source prompt's embedding as $\varnothing$ (no optimisation).
""" + HOW_TO),
        code('''
# Parameters (papermill can override every name in this cell)
INTERACTIVE = True          # show the panels; False: headless, figures + metrics.json go to OUT_DIR
MODEL = "shapes-tiny"       # built-in model; on a GPU e.g. "stable-diffusion-v1-5/stable-diffusion-v1-5"
SEED = 0                    # first scene seed of the test images
STEPS = None                # S of the method comparison (None: the model's default, 50)
GUIDANCE = None             # None: 7.5, the guidance null-text and negative-prompt inversion were made for
NUM_IMAGES = 3              # test images (rendered scenes), inverted as one batch
STEPS_SWEEP = [10, 20, 50, 100]         # S of the reconstruction-error table, without guidance
GUIDANCE_SWEEP = [1.0, 2.5, 5.0, 7.5]
SWEEP_STEPS = 20            # S of the guidance sweep
NULL_TEXT_INNER_STEPS = 10  # Adam steps per timestep of null-text inversion (the paper's N)
DEVICE = None               # None: cpu for shapes-tiny, the GPU for Stable Diffusion; or "cuda", "cpu", "mps"
THREADS = None              # CPU threads of torch (None: half the cores, at most 4)
OUT_DIR = None              # None: outputs/labs/03_ddim_inversion
''', tags=("parameters",)),
        code(SETUP_COMMON.replace("OUT = ", 'LAB = "03_ddim_inversion"\nOUT = ').replace(
            'GUIDANCE = float(GUIDANCE or defaults["guidance_scale"])',
            "GUIDANCE = float(GUIDANCE or 7.5)  # what null-text and negative-prompt inversion are made for") + '''
from diffusion_lab.widgets import inversion as lab
if QUICK:
    NUM_IMAGES, STEPS_SWEEP, GUIDANCE_SWEEP, SWEEP_STEPS, STEPS, NULL_TEXT_INNER_STEPS = 2, [10, 20], [1.0, 7.5], 10, 20, 3
scenes = [common.source_scene(pipe, SEED + i) for i in range(NUM_IMAGES)]
images, prompts = [s[0] for s in scenes], [s[1] for s in scenes]
targets = [lab.swap_shape(p) for p in prompts]  # edit prompts: the shape word swapped
'''),
        code('print("\\n".join(f"{p}  ->  {t}" for p, t in zip(prompts, targets)))'),
        md(r"""
## 1. Encode and decode: the VAE first

A latent model sees $z_0 = E(x_0)$; the best any latent inversion can do is $D(E(x_0))$, the **VAE ceiling**.
"""),
        code('''
vae = lab.vae_ceiling(pipe, images)
vae_row = common.image_row([*images, *vae["images"]], ["input"] * NUM_IMAGES + ["VAE"] * NUM_IMAGES, NUM_IMAGES)
show(vae_row)
print(f"VAE round trip: PSNR {vae['psnr']:.1f} dB")
common.save_outputs(OUT, {"vae_round_trip": vae_row}, {"vae": {"psnr": vae["psnr"], "mse": vae["mse"]}})
'''),
        md(r"""
## 2. Reconstruction error against $S$ (no guidance)

DDIM inversion then DDIM sampling, $w = 1$: the error per pixel dimension ($[0, 1]$ scale) against the input,
and against the VAE round trip (the inversion's own error), beside DDIM's Table 2 (CIFAR10, a pixel-space model,
no VAE). More steps, smaller steps, smaller error.
"""),
        code('''
steps_rows, steps_images = lab.steps_sweep(pipe, images, prompts, STEPS_SWEEP, 1.0, vae["images"])
show_table(lab.rows_markdown(steps_rows, digits=5))
common.save_outputs(OUT, metrics={"steps_sweep": steps_rows})
'''),
        md(r"""
## 3. The failure under guidance

Three ways to reconstruct with guidance $w$: invert at $w = 1$ and sample at $w$ (what a naive editor does),
DDIM-invert the guided model itself, and negative-prompt inversion. Watch the PSNR fall with $w$ for the first two.
"""),
        code('''
guidance_rows = lab.guidance_sweep(pipe, images, prompts, GUIDANCE_SWEEP, SWEEP_STEPS, vae_images=vae["images"])
show_table(lab.rows_markdown(guidance_rows, digits=2))
guidance_plot = lab.guidance_figure(guidance_rows, vae["psnr"])
show(guidance_plot)
common.save_outputs(OUT, {"guidance_sweep": guidance_plot}, {"guidance_sweep": guidance_rows})
'''),
        md(r"""
## 4. The repair: null-text and negative-prompt inversion, side by side

At $w$ = `GUIDANCE`, $S$ = `STEPS`: one row per image — input, VAE, each method's reconstruction, then each
method's **edit** (the same inversion sampled with the prompt's shape swapped). An inversion is only useful for
editing if it reconstructs *and* stays editable.
"""),
        code('''
comparison = lab.method_comparison(pipe, images, prompts, GUIDANCE, STEPS, target_prompts=targets,
                                   inner_steps=NULL_TEXT_INNER_STEPS, vae=vae)
show(comparison["figure"])
'''),
        code(IGNORE + '''
show_table(lab.rows_markdown(comparison["rows"]))  # seconds: wall time of each inversion on this machine
common.save_outputs(OUT, {"methods": comparison["figure"]}, {"methods": comparison["rows"]})
'''),
        md("### Try it: method, $S$, $w$ and an edit prompt (inversions are cached: change only the edit prompt and rerun)"),
        code(IGNORE + '''
if INTERACTIVE:
    display(lab.InversionPanel(pipe, images[0], prompts[0], targets[0], method="ddim", num_steps=STEPS,
                               guidance_scale=GUIDANCE, inner_steps=NULL_TEXT_INNER_STEPS))
'''),
        md(r"""
**Questions.** (1) Why is DDIM inversion exact in the limit of small steps but not at $S = 10$? (2) Why does an
error in $z_T$ grow under guidance $w > 1$? (3) Negative-prompt inversion makes $\hat\epsilon_\varnothing =
\hat\epsilon_c$ for the source: what does guidance then do to the reconstruction, and to an edit?
"""),
        code(FINISH),
    ])


# ---------------------------------------------------------------------------------------------------------------
# Lab 4: Prompt-to-Prompt
# ---------------------------------------------------------------------------------------------------------------


def lab4():
    return notebook([
        md(r"""
# Lab 4 — Prompt-to-Prompt: editing through the cross-attention maps

*"The spatial layout and geometry of the generated image depends on the cross-attention maps."* In each
cross-attention layer the image's pixels (queries $Q = \ell_Q(\phi(z_t))$) attend to the prompt's tokens
(keys $K = \ell_K(\psi(P))$):

$$M = \operatorname{Softmax}\!\left(\frac{QK^\top}{\sqrt d}\right),\qquad \text{output} = M V,$$

so column $j$ of $M$ is a map of *where word $j$ is drawn*, and the values $V = \ell_V(\psi(P))$ say *what* is
drawn there. The text encoder $\psi$ is causal, in Stable Diffusion's CLIP as in shapes-tiny's one layer: each
word's embedding also reads the words before it, so swapping "red" for "blue" changes the embedding of "circle" too
(that is how the model knows which colour belongs to which shape). Prompt-to-Prompt generates the source and the edited
prompt from the same $x_T$ and **injects the source's maps** $M_t$ into the edited prompt's sampling:
word swap (*replace*: "circle $\to$ square"), *refine* (a word added: its own maps, the others from the source),
*reweight* (scale one word's column), and *local blend* (keep the source's latents outside the edited word's map).
On a **real** image, the same runs from an inversion (lab 3).
""" + HOW_TO),
        code('''
# Parameters (papermill can override every name in this cell)
INTERACTIVE = True          # show the panels; False: headless, figures + metrics.json go to OUT_DIR
MODEL = "shapes-tiny"       # built-in model; on a GPU e.g. "stable-diffusion-v1-5/stable-diffusion-v1-5"
SEED = 0                    # seed of the generated source image
STEPS = None                # DDIM steps S (None: the model's default, 50)
GUIDANCE = None             # w (None: 5.0 for shapes-tiny, 7.5 for Stable Diffusion)
SOURCE_PROMPT = "a large red circle on a gray background"
SHAPE_SWAP = ("circle", "square")
COLOUR_SWAP = ("red", "blue")
REWEIGHT_WORD = "red"
REWEIGHT_SCALES = [0.0, 0.5, 1.0, 2.0, 4.0]
REAL_SCENE_SEED = 3         # the real image: a rendered scene with the source prompt's object
REAL_INVERSION = "direct"    # or "negative_prompt", "null_text" (slower, lab 3), "fixed_point", "ddim"
NULL_TEXT_INNER_STEPS = 10
DEVICE = None               # None: cpu for shapes-tiny, the GPU for Stable Diffusion; or "cuda", "cpu", "mps"
THREADS = None              # CPU threads of torch (None: half the cores, at most 4)
OUT_DIR = None              # None: outputs/labs/04_prompt_to_prompt
''', tags=("parameters",)),
        code(SETUP_COMMON.replace("OUT = ", 'LAB = "04_prompt_to_prompt"\nOUT = ') + '''
from diffusion_lab.shapes import parse_caption
from diffusion_lab.widgets import prompt_to_prompt as lab
if QUICK:
    STEPS, REWEIGHT_SCALES, NULL_TEXT_INNER_STEPS = 20, [0.0, 2.0], 3
edits = lab.examples(SOURCE_PROMPT, SHAPE_SWAP, COLOUR_SWAP, reweight=(REWEIGHT_WORD, 0.3))
wanted = parse_caption(SOURCE_PROMPT)
objects = [{k: getattr(o, k) for k in ("shape", "colour", "size") if getattr(o, k)} for o in wanted.objects]
real_image, real_prompt, _ = common.source_scene(pipe, REAL_SCENE_SEED, objects=objects, background=wanted.background)
inversion_guidance = 1.0 if REAL_INVERSION == "ddim" else GUIDANCE
inversion_options = {"inner_steps": NULL_TEXT_INNER_STEPS} if REAL_INVERSION == "null_text" else {}
'''),
        code(CHECK + '''
for edit in edits:
    print(f"{edit['title']:<32} {edit['source_prompt']!r} -> {edit['target_prompts'][0]!r}")
print("real image caption:", real_prompt)
'''),
        md(r"""
## 1. Cross-attention maps per word, averaged over all steps

The lecture's figure: generate the prompt, record every cross-attention map of the conditional branch, average
over the steps and the layers of one map size, and draw the column of each word over the image.
"""),
        code('''
source_image, maps_figure = lab.word_maps(pipe, SOURCE_PROMPT, seed=SEED, num_steps=STEPS, guidance_scale=GUIDANCE)
show(maps_figure)
common.save_outputs(OUT, {"word_maps": maps_figure})
'''),
        md(r"""
### Which layers place the words?

The figure above stretches every map to its own range, so even a flat map looks like a shape. Below, the same
maps at **every** map size of the UNet, on **one** scale: each value is the share of a pixel's attention that goes
to the word. The table measures it: the mass of the word's map on the object (the analyzer's mask, dilated by
2 pixels) relative to a uniform map (1 = no better than uniform). Prompt-to-Prompt can only move what these maps
hold. A model as small as shapes-tiny does not learn this on its own: trained on the denoising loss alone, its 16x16
layers spread every word over the whole image (1.0x uniform) and only its 8x8 layers placed the words (about 2x).
The shipped model was then fine-tuned with a *grounding loss* that tells each word's map where its object is
(TokenCompose; see the model card), and every row below places the words. Stable Diffusion learns it from scale.
"""),
        code('''
sizes_figure, size_rows = lab.word_maps_by_size(pipe, SOURCE_PROMPT, seed=SEED, num_steps=STEPS, guidance_scale=GUIDANCE)
show(sizes_figure)
show_table(common.markdown_table(size_rows, digits=2))
common.save_outputs(OUT, {"word_maps_by_size": sizes_figure}, {"word_maps_by_size": size_rows})
'''),
        md(r"""
## 2. Edits of a generated image

Each row: the source, the target prompt sampled from the same $x_T$ **without** attention injection (the layout
is free to change), and **with** Prompt-to-Prompt (the source's maps during the first 80% of the steps,
self-attention during the first 40%). The analyzer scores each edit: did the target's attributes appear, did the
object stay in place, how far is the edit from the source (PSNR).
"""),
        code('''
generated_rows, generated_figure = lab.run_examples(pipe, edits, seed=SEED, num_steps=STEPS, guidance_scale=GUIDANCE)
show(generated_figure)
show_table(lab.rows_markdown(generated_rows))
common.save_outputs(OUT, {"edits_generated": generated_figure}, {"edits_generated": generated_rows})
'''),
        md(r"""
### Reweighting one word

Scaling the column of one word in every cross-attention map strengthens or weakens its effect without changing
the prompt (P2P's *attention re-weighting*).
"""),
        code('''
strip = lab.reweight_strip(pipe, SOURCE_PROMPT, REWEIGHT_WORD, REWEIGHT_SCALES, seed=SEED, num_steps=STEPS,
                           guidance_scale=GUIDANCE)
show(strip)
common.save_outputs(OUT, {"reweight": strip})
'''),
        md(r"""
## 3. Edits of a real image

Invert the image with its caption, then run the same edits from the inversion: the first column is the input,
the second its reconstruction. The default is *direct inversion* (PnP Inversion, Ju et al. 2024): DDIM inversion
at $w = 1$ gives the pivot $z^*_T, \dots, z^*_0$; while the edit samples at $w$, the **source** row is put back
on the pivot after every step, so its attention maps (the ones the targets receive) are those of the real image,
and the target rows are left free. Null-text inversion (lab 3, `REAL_INVERSION = "null_text"`) instead optimises
the unconditional embedding, which every row shares, so it steers the targets too. On `pipelines/bench_p2p.py`'s
30 inverted renders, direct inversion kept the object better in word swaps (IoU 0.68 vs 0.61 with null-text) and
made the edit more often (97% vs 93%), in 389 s instead of 621 s (see the README).
"""),
        code('''
real_rows, real_figure = lab.run_examples(
    pipe, lab.examples(real_prompt, SHAPE_SWAP, COLOUR_SWAP, reweight=(REWEIGHT_WORD, 0.3)), guidance_scale=GUIDANCE,
    real_image=real_image, inversion_method=REAL_INVERSION, num_steps=STEPS, inversion_guidance=inversion_guidance,
    inversion_options=inversion_options)
show(real_figure)
show_table(lab.rows_markdown(real_rows))
common.save_outputs(OUT, {"edits_real": real_figure}, {"edits_real": real_rows})
'''),
        md(r"""
### Try it: every knob of an edit

Choose *generated* (a seed) or *real image* (the scene above, inverted once and then cached), write the target
prompt, pick the edit and its schedule, and press **Run edit**. For a word swap the prompts must have the same
number of words; for *refine* the target adds words; for *reweight* name a word and a scale; local blend needs the
words whose region may change (e.g. `circle square`).
"""),
        code(IGNORE + '''
if INTERACTIVE:
    panel = lab.PromptToPromptPanel(pipe, real_image, real_prompt, SOURCE_PROMPT,
                                    SOURCE_PROMPT.replace(*SHAPE_SWAP), seed=SEED, num_steps=STEPS,
                                    guidance_scale=GUIDANCE, inversion_method=REAL_INVERSION,
                                    inner_steps=NULL_TEXT_INNER_STEPS)
    display(panel)
'''),
        md(r"""
**What the tiny model cannot do.** The faint strokes beside the blue circle in the "red $\to$ blue" rows come
from shapes-tiny's VAE, not from Prompt-to-Prompt: encoding and decoding a *rendered* large blue circle shows the
same kind of ghost (the model card measures it). The recoloured circle also drifts a little towards where the
prompt alone puts it (the "no P2P" column): the injected maps are $16 \times 16$ and leave the last 20% of the
steps free. Local blend keeps the source's latents outside the maps of the swapped words; that works because
shapes-tiny's VAE was fine-tuned for *local* latents (a recoloured object no longer changes the background's
latents; before that fine-tune the "red $\to$ blue + local blend" row decoded to noise). Stable Diffusion's VAE
is local enough for local blend as it comes (the Prompt-to-Prompt paper's edits use it).

**Questions.** (1) Without P2P, why does "circle $\to$ square" also move the object or change the background?
(2) What happens with `cross-attn steps` = 0 and = 1? (3) Why does local blend keep the background *exactly*?
(4) On the real image, which inversion keeps the reconstruction and still lets the edit happen?
"""),
        code(FINISH),
    ])


LAB_BUILDERS = {
    "01_naive_noising.ipynb": lab1,
    "02_generalized_posterior.ipynb": lab2,
    "03_ddim_inversion.ipynb": lab3,
    "04_prompt_to_prompt.ipynb": lab4,
}


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write the lab notebooks (without outputs) from this file.")
    parser.add_argument("labs", nargs="*", help="prefixes of the labs to write (default: all), e.g. 02")
    args = parser.parse_args(argv)
    for name, build in LAB_BUILDERS.items():
        if args.labs and not any(name.startswith(prefix) for prefix in args.labs):
            continue
        nb = build()
        nbformat.validate(nb)
        path = LABS / name
        nbformat.write(nb, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

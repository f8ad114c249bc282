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
# # Lab 3 — DDIM inversion: encode, decode, and the repair under guidance
#
# For editing we need **exact inversion**: the $x_T$ from which sampling gives our image back. DDIM's sampler with
# $\sigma_t = 0$ is deterministic,
#
# $$x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat x_\theta(x_t, t) + \sqrt{1 - \bar\alpha_{t-1}}\;\hat\epsilon_\theta(x_t, t),
# \qquad \hat x_\theta = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\hat\epsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}},$$
#
# (*implemented by* `diffusion_lab.posterior.generalized_posterior_step` with $\eta = 0$; $\hat x_\theta$:
# `posterior.x0_from_epsilon`), so it can be run **backwards** (encode), from $x_{t-1}$ up to $x_t$, if we use $\hat\epsilon_\theta(x_{t-1}, t)$ in
# place of the unknown $\hat\epsilon_\theta(x_t, t)$ (one step: `diffusion_lab.inversion.ddim_inversion_step`; the loop:
# `inversion.invert_latents`). Decoding is ordinary DDIM sampling. The approximation is good for
# small steps and without guidance; with classifier-free guidance
# $\hat\epsilon = \hat\epsilon_\varnothing + w(\hat\epsilon_c - \hat\epsilon_\varnothing)$, $w = 7.5$, its errors
# grow. **Null-text inversion** inverts at $w = 1$ (the *pivot*) and optimises the unconditional embedding
# $\varnothing_t$ of each step so that guided sampling retraces the pivot; **negative-prompt inversion** simply uses
# the source prompt's embedding as $\varnothing$ (no optimisation).
#
# *Implemented by* `diffusion_lab.inversion.optimize_null_text` (the inner Adam loop of null-text inversion),
# and `inversion.invert` (`method="null_text"`, `"negative_prompt"` or `"ddim"`).
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
SEED = 11                   # first scene of the sample: scenes SEED, SEED + 1, ... (the first NUM_IMAGES are the
                            # worked examples); also the seed of edit-friendly inversion's noise
STEPS = None                # S of the interactive panel and of edit-friendly's section (None: the model's default, 50)
GUIDANCE = None             # None: 7.5, the guidance null-text and negative-prompt inversion were made for
NUM_IMAGES = 3              # worked examples (rendered scenes), inverted as one batch
STUDY_SIZE = 16             # N: scenes of the studies of how often each claim holds (the examples are the first)
STEPS_SWEEP = [10, 20, 50]  # S of the reconstruction-error study, without guidance (claims.py adds 100)
BASIN_STEPS = 20            # S of the wrong-basin study and example (DDIM against fixed-point, no guidance)
BASIN_SEARCH = 48           # scenes searched after the sample for a wrong-basin example when the sample has none
GUIDANCE_SWEEP = [1.0, 2.5, 5.0, 7.5]
SWEEP_STEPS = 20            # S of the guidance sweep
NULL_TEXT_INNER_STEPS = 10  # Adam steps per timestep of null-text inversion (the paper's N)
NULL_TEXT_SETTINGS = "paper"  # Mokady et al.'s loop (exercise 3.3; the quoted numbers); "fast": the library's default
METHOD_STEPS = 20           # S of the method study and its figure (null-text costs ~15 s CPU a scene at S 50)
METHOD_STUDY_SIZE = 8       # N of the method study: the first scenes of the sample (worked examples: its first)
NULL_TEXT_STUDY_SIZE = 4    # null-text on the first scenes of the method study only (its optimisation is the cost)
DEVICE = None               # None: cpu for shapes-tiny, the GPU for Stable Diffusion; or "cuda", "cpu", "mps"
THREADS = None              # CPU threads of torch (None: half the cores, at most 4)
OUT_DIR = None              # None: outputs/labs/03_ddim_inversion

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
GUIDANCE = float(GUIDANCE or 7.5)  # what null-text and negative-prompt inversion are made for
LAB = "03_ddim_inversion"
OUT = common.lab_out_dir(OUT_DIR, LAB)
common.reset_metrics(OUT)
common.configure_threads(THREADS)  # None: half the cores (1 on a 2-core laptop: faster than 2 when shared)
pipe = common.get_pipeline(MODEL, device=DEVICE)

from diffusion_lab.widgets import inversion_panel as lab
if QUICK:
    NUM_IMAGES, STEPS_SWEEP, GUIDANCE_SWEEP, SWEEP_STEPS, STEPS = 2, [10, 20], [1.0, 7.5], 10, 20
    STUDY_SIZE, BASIN_STEPS, BASIN_SEARCH = 4, 10, 8
    METHOD_STUDY_SIZE, NULL_TEXT_STUDY_SIZE = 3, 2
if not NUM_IMAGES <= NULL_TEXT_STUDY_SIZE <= METHOD_STUDY_SIZE <= STUDY_SIZE:
    raise ValueError(f"NUM_IMAGES = {NUM_IMAGES}, NULL_TEXT_STUDY_SIZE = {NULL_TEXT_STUDY_SIZE}, METHOD_STUDY_SIZE = "
                     f"{METHOD_STUDY_SIZE}, STUDY_SIZE = {STUDY_SIZE}: the worked examples are the first scenes of the "
                     "method study, null-text runs on its first scenes, and the method study on the sample's first: "
                     "choose NUM_IMAGES <= NULL_TEXT_STUDY_SIZE <= METHOD_STUDY_SIZE <= STUDY_SIZE")
if not 1 <= NUM_IMAGES <= STUDY_SIZE:
    raise ValueError(f"NUM_IMAGES = {NUM_IMAGES}: the worked examples are the first scenes of the study's sample, so "
                     f"choose 1 <= NUM_IMAGES <= STUDY_SIZE = {STUDY_SIZE} (or raise STUDY_SIZE)")
if len(STEPS_SWEEP) < 2 or sorted(STEPS_SWEEP) != list(STEPS_SWEEP):
    raise ValueError(f"STEPS_SWEEP = {STEPS_SWEEP}: give at least two S in increasing order (the claim compares the "
                     "smallest with the largest)")
from diffusion_lab import stats
from diffusion_lab.latents import image_size
from diffusion_lab.studies import scene_draws
from diffusion_lab.studies import inversion as inversion_study

sample = scene_draws(image_size(pipe), range(SEED, SEED + STUDY_SIZE))  # the lab's scenes: one object each
images, prompts = [d.image for d in sample[:NUM_IMAGES]], [d.prompt for d in sample[:NUM_IMAGES]]
targets = [lab.swap_shape(p) for p in prompts]  # edit prompts: the shape word swapped

# %%
print("\n".join(f"{p}  ->  {t}" for p, t in zip(prompts, targets)))

# %% [markdown]
# ## 1. Encode and decode: the VAE first
#
# A latent model sees $z_0 = E(x_0)$; the best any latent inversion can do is $D(E(x_0))$, the **VAE ceiling**.

# %%
vae = lab.vae_ceiling(pipe, images)
vae_row = common.image_row([*images, *vae["images"]], ["input"] * NUM_IMAGES + ["VAE"] * NUM_IMAGES, NUM_IMAGES)
show(vae_row)
print(f"VAE round trip: PSNR {vae['psnr']:.1f} dB")
common.save_outputs(OUT, {"vae_round_trip": vae_row}, {"vae": {"psnr": vae["psnr"], "mse": vae["mse"]}})

# %% [markdown]
# ## 2. Reconstruction error against $S$ (no guidance)
#
# DDIM inversion then DDIM sampling, $w = 1$, for the `STUDY_SIZE` scenes of the sample (the worked examples are
# its first `NUM_IMAGES`): the PSNR against the input, the gap to each scene's VAE round trip (the inversion's own
# error) and how often a scene comes back as another image (more than 5 dB below its VAE round trip), beside DDIM's
# Table 2 (mean squared error per dimension on CIFAR10, a pixel-space model, no VAE). More steps, smaller steps,
# smaller error -- for most images. Means have 95% bootstrap intervals, rates 95% Wilson intervals
# (`diffusion_lab.stats`); the study is `diffusion_lab.studies.inversion.steps_study`.

# %%
sample_vae = inversion_study.vae_psnr(pipe, sample)
steps_study = inversion_study.steps_study(pipe, sample, STEPS_SWEEP, sample_vae)
steps_rows = [{"S": s, "PSNR, worked examples (dB)": round(float(steps_study["psnr"][s][:NUM_IMAGES].mean()), 2),
               **{k: v for k, v in row.items() if k != "S"}, "CIFAR10 mse (paper)": lab.DDIM_TABLE2.get(s, "")}
              for s, row in zip(STEPS_SWEEP, inversion_study.steps_rows(steps_study))]
show_table(common.markdown_table(steps_rows, digits=2))
common.save_outputs(OUT, metrics={"steps_study": {s: {"mean": steps_study["mean"][s].as_dict(),
                                                      "wrong_basin": steps_study["wrong_basin"][s].as_dict()}
                                                  for s in steps_study["steps"]},
                                  "improves": steps_study["improves"].as_dict()})
print(f"VAE round trip: worked examples {vae['psnr']:.1f} dB; the sample {stats.mean(sample_vae, 'dB')}")

# %% [markdown]
# **Check: more steps, smaller error, as a rate.** Per scene, is the reconstruction at the largest $S$ at least as
# good (within 0.3 dB) as at the smallest? The claim is that this holds for most scenes: the 95% interval of the rate
# lies above one half (a QUICK run, with a few scenes, checks the estimate only). A scene where it fails is not an
# error of the lab: DDIM inversion sometimes carries a scene into another image at one $S$ and not at another
# (section "wrong basin" below), so the *mean* over a few scenes need not rise with $S$. At N = 64 (`python
# pipelines/claims.py`, scenes 11-74) the mean PSNR is 32.7, 33.6, 34.2 and 34.3 dB at $S$ = 10, 20, 50 and 100
# (each $\pm$ about 0.5 dB), 1.8, 0.9, 0.3 and 0.2 dB below the VAE round trip, and $S$ = 100 is at least as good
# as $S$ = 10 in 98% (95% CI 92-100%) of the scenes.

# %%
improves = steps_study["improves"]
s_min, s_max = STEPS_SWEEP[0], STEPS_SWEEP[-1]
print(f"S = {s_max} at least as good as S = {s_min} (within 0.3 dB) in {improves} of the scenes")
for index, draw in enumerate(sample[:NUM_IMAGES]):
    first, last = steps_study["psnr"][s_min][index], steps_study["psnr"][s_max][index]
    if last <= first - 0.3:
        print(f"worked example scene {draw.scene_seed}: {first:.1f} dB at S = {s_min}, {last:.1f} dB at S = {s_max}: "
              f"this draw is one of the {100 - 100 * improves.value:.0f}% ({improves.n - improves.successes}/"
              f"{improves.n}) where more steps do not help")
assert (improves.low if not QUICK else improves.value) > 0.5, (
    f"more steps help in only {improves} of the scenes: the claim 'more steps, smaller error' does not hold for this "
    "sample; try a larger STUDY_SIZE")

# %% [markdown]
# ## 3. The failure under guidance
#
# Three ways to reconstruct with guidance $w$: invert at $w = 1$ and sample at $w$ (what a naive editor does),
# DDIM-invert the guided model itself, and negative-prompt inversion, all at $S$ = `SWEEP_STEPS` (20). Watch the
# PSNR fall with $w$ for the first two.

# %%
guidance_rows = lab.guidance_sweep(pipe, images, prompts, GUIDANCE_SWEEP, SWEEP_STEPS, vae_images=vae["images"])
show_table(lab.rows_markdown(guidance_rows, digits=2))
largest = f"w={GUIDANCE_SWEEP[-1]:g}"
guidance_plot = lab.guidance_figure(guidance_rows, vae["psnr"])
show(guidance_plot)
common.save_outputs(OUT, {"guidance_sweep": guidance_plot}, {"guidance_sweep": guidance_rows})

# %% [markdown]
# **Check: guidance breaks DDIM inversion, as a rate.** Over the sample, at $S$ = `SWEEP_STEPS`: per scene, the
# PSNR at $w = 1$ minus the PSNR at the largest $w$ (`diffusion_lab.studies.inversion.guidance_study`). The claim:
# for both DDIM rows the drop exceeds 1 dB in most scenes (the rate's interval above one half), for negative-prompt
# inversion in few (below one half); a QUICK run checks the estimates only. At N = 64 (`python pipelines/claims.py`)
# $w = 7.5$ costs DDIM inverted at $w = 1$ 7.3 dB (95% CI 5.9-8.8) and DDIM inverted at $w$ 11.0 dB (9.2-12.8),
# more than 1 dB in 95% (87-98%) of the scenes for each; negative-prompt inversion loses nothing in every scene
# (with $\varnothing = c$ the guided prediction *is* the conditional one: question 3).

# %%
guidance_study = inversion_study.guidance_study(pipe, sample, GUIDANCE_SWEEP[-1], SWEEP_STEPS)
show_table(common.markdown_table(inversion_study.guidance_rows(guidance_study)))
common.save_outputs(OUT, metrics={"guidance_study": {name: {k: v.as_dict() for k, v in m.items() if k != "psnr"}
                                                     for name, m in guidance_study["methods"].items()}})
for name, method in guidance_study["methods"].items():
    breaks, should_break = method["breaks"], name.startswith("DDIM")
    print(f"{name:22s} drop {method['drop']}; more than 1 dB in {breaks}")
    for index, draw in enumerate(sample[:NUM_IMAGES]):
        at_1, drop = method["psnr"][1.0][index], method["psnr"][1.0][index] - method["psnr"][GUIDANCE_SWEEP[-1]][index]
        if should_break and drop <= inversion_study.GUIDANCE_COST_DB:
            change = f"loses only {drop:.1f} dB" if drop >= 0 else f"gains {-drop:.1f} dB (from {at_1:.1f} dB at w = 1)"
            print(f"  worked example scene {draw.scene_seed} {change}: this draw is one of the "
                  f"{breaks.n - breaks.successes}/{breaks.n} scenes where guidance does not cost DDIM over 1 dB")
    if should_break:
        assert (breaks.low if not QUICK else breaks.value) > 0.5, f"{name}: guidance breaks only {breaks} of the scenes"
    else:
        assert (breaks.high if not QUICK else breaks.value) < 0.5, f"{name}: guidance breaks {breaks} of the scenes"

# %% [markdown]
# ## 4. The repair: null-text and negative-prompt inversion, side by side
#
# At $w$ = `GUIDANCE` every method inverts the first `METHOD_STUDY_SIZE` scenes of the sample and samples them back,
# and samples them again with the caption's shape swapped (the **edit**; `diffusion_lab.shapes.swap_shape`)
# (`diffusion_lab.studies.inversion.method_study`). An inversion is only useful for editing if it reconstructs
# *and* stays editable. Per method: the mean gap to each scene's VAE round trip (95% bootstrap interval), how often
# it **keeps the reconstruction** (within 2 dB of the VAE round trip) and how often its **edit is made** (the
# analyzer finds the swapped shape with the caption's colour, size and background) and the **layout kept** (the
# object within the analyzer's tolerance of where it was), rates with 95% Wilson intervals. To fit a lab's time, the
# study runs at $S$ = `METHOD_STEPS` (20, not `STEPS` = 50: null-text costs about 15 s of CPU per scene at
# $S = 50$) and null-text on the first `NULL_TEXT_STUDY_SIZE` scenes only (its n says so); the figure shows the
# first `NUM_IMAGES` scenes of the study (the worked examples). Null-text runs the paper's loop
# (`NULL_TEXT_SETTINGS = "paper"`: up to 10 Adam steps per timestep at learning rate 0.01, as in exercise 3.3); the
# library's default loop (`"fast"`) is about 3.3x cheaper in CPU time, at a mean gap of 0.19 dB against the paper's
# 0.32 dB on 6 renders at $S = 50$ (README, "Null-text inversion, faster").
#
# What `python pipelines/claims.py --labs 3m` measured at N = 64 (scenes 11-74, $w = 7.5$, $S = 20$):
# DDIM inverted at $w = 1$ and at $w$ come back 8.2 dB (95% CI 6.7-9.9) and 11.9 dB (10.1-13.8) below the VAE round
# trip and keep the reconstruction in 12% (8/64; 95% CI 6-23%) and 3% (2/64; 1-11%) of the scenes. Fixed-point
# inversion, each guided step solved at $w$, does not repair it either: 9.2 dB (7.6-10.8), keeps 16% (10/64; 9-26%).
# Null-text and negative-prompt come back 0.82 dB (0.55-1.22) and 0.92 dB (0.72-1.19) below it and keep the
# reconstruction in 94% (60/64; 85-98%) of the scenes each; null-text gains 7.4 dB (6.1-8.9) over DDIM inverted at
# $w = 1$, scene by scene. Edit-friendly is exact (0.00 dB; 64/64 within 2 dB). The shape swap is made in 97%
# (62/64; 89-99%) of the scenes from DDIM's $w = 1$ pivot, 92% (59/64; 83-97%) from null-text, 89% (57/64; 79-95%)
# from negative-prompt, 83% (53/64; 72-90%) from edit-friendly, 59% (38/64; 47-71%) from DDIM inverted at $w$ and
# 53% (34/64; 41-65%) from fixed-point; the object stays in place in 75-84% of every method's edits except
# edit-friendly's, 56% (36/64; 44-68%). Null-text ran on all 64 scenes there.
#
# The check: guidance costs both DDIM rows more than 2 dB on average (the interval of the mean gap above 2 dB);
# null-text and negative-prompt repair it (their gap below DDIM inverted at $w = 1$'s, paired per scene: the
# interval of the gain above 0); edit-friendly is exact (mean gap under 0.1 dB). A QUICK run checks the estimates.

# %%
method_study = inversion_study.method_study(
    pipe, sample[:METHOD_STUDY_SIZE], inversion_study.method_specs(GUIDANCE), METHOD_STEPS,
    sample_vae[:METHOD_STUDY_SIZE], seed=SEED, inner_steps=NULL_TEXT_INNER_STEPS,
    limits={"null-text": NULL_TEXT_STUDY_SIZE}, null_text_settings=NULL_TEXT_SETTINGS)
comparison_figure = lab.method_study_figure(method_study, inversion_study.inputs_uint8(sample), vae["images"],
                                            NUM_IMAGES)
show(comparison_figure)
show_table(common.markdown_table(inversion_study.method_rows(method_study)))
common.save_outputs(OUT, {"methods": comparison_figure}, {"method_study": {
    name: {k: v.as_dict() for k, v in m.items() if k in ("gap", "keeps", "edit_made", "layout_kept")}
    for name, m in method_study["methods"].items()}})
for line in inversion_study.method_example_lines(method_study, NUM_IMAGES):
    print(line)
for claim in inversion_study.method_claims(method_study, intervals=not QUICK):
    print(f"{'holds' if claim['holds'] else 'DOES NOT HOLD'}: {claim['claim']} ({claim['evidence']})")
    assert claim["holds"], f"{claim['claim']}: {claim['evidence']} (try a larger METHOD_STUDY_SIZE)"

# %%
# NBVAL_IGNORE_OUTPUT

print("CPU seconds per method (inversion, reconstruction and edit):",
      {name: round(m["seconds"], 1) for name, m in method_study["methods"].items()})

# %% [markdown]
# ### Try it: method, $S$, $w$ and an edit prompt (inversions are cached: change only the edit prompt and rerun)

# %%
# NBVAL_IGNORE_OUTPUT

if INTERACTIVE:
    display(lab.InversionPanel(pipe, images[0], prompts[0], targets[0], method="ddim", num_steps=STEPS,
                               guidance_scale=GUIDANCE, inner_steps=NULL_TEXT_INNER_STEPS))

# %% [markdown]
# **Questions.** (1) Why is DDIM inversion exact in the limit of small steps but not at $S = 10$? (2) Why does an
# error in $z_T$ grow under guidance $w > 1$? (3) Negative-prompt inversion makes $\hat\epsilon_\varnothing =
# \hat\epsilon_c$ for the source: what does guidance then do to the reconstruction, and to an edit?

# %% [markdown]
# ### When DDIM inversion lands in the wrong basin, even at $w = 1$
#
# The approximation $\hat\epsilon_\theta(x_{t-1}, t) \approx \hat\epsilon_\theta(x_t, t)$ usually costs about
# a dB (section 2). For a few images it costs the image: DDIM inversion followed by DDIM sampling brings back a
# different picture (the object moved, reshaped or recoloured). Section 2's last column counts how often (more than 5 dB below the
# scene's VAE round trip). It is not the arithmetic: the same inversion in float64 gives the same picture. It is the
# approximation: each step's small error moves the sampled path off the inverted one, and from the middle of the
# schedule on the model's $\hat\epsilon$ pulls the drifted path toward another image. Smaller steps make the error
# smaller but do not rescue every image (a scene can miss at one $S$ and not at another; README, "Inversion
# fidelity"). **Fixed-point inversion** (`inversion.invert_latents` with `FixedPointSettings`) solves each step's
# equation $x_t = f(x_t)$ instead of approximating it. The study compares the two over the sample at $S$ =
# `BASIN_STEPS` (`diffusion_lab.studies.inversion.basin_study`); the worked example is the first scene of the sample
# where DDIM misses, or, when none does, the first found by searching the next `BASIN_SEARCH` scenes.
#
# What `python pipelines/claims.py` measured at N = 64 (scenes 11-74, $w = 1$): DDIM lands in another basin in 1
# of the 64 scenes at $S$ = 10 and 20 (2%; 95% CI 0-8%: scene 30, the example below, 7.3 dB below its VAE round
# trip at $S$ = 20 although the analyzer still reads the same small orange square)
# and in none at $S$ = 50 and 100 (95% CI 0-6%); it comes back within 1 dB of its VAE round trip in 64% (52-75%) of
# the scenes at $S$ = 20 and 95% (87-98%) at $S$ = 50. Fixed-point inversion comes back within 1 dB in all 64 at
# both $S$ (mean gap 0.02 dB at $S$ = 20). A wrong basin is rare: a sample of 16 scenes usually holds none, and
# then the lab searches the scenes after it.

# %%
basin_study = inversion_study.basin_study(pipe, sample, BASIN_STEPS, sample_vae, steps_study["psnr"].get(BASIN_STEPS))
show_table(common.markdown_table(inversion_study.basin_rows(basin_study)))
fixed_gap = basin_study["gap"]["fixed-point"]
print(f"fixed-point inversion's mean gap to the VAE round trip: {fixed_gap}")
common.save_outputs(OUT, metrics={"basin_study": {"missed_scenes": basin_study["missed_scenes"],
                                                  "gap": {k: v.as_dict() for k, v in basin_study["gap"].items()}}})
assert (fixed_gap.high if not QUICK else fixed_gap.mean) < 0.5, (
    f"fixed-point inversion should reach the VAE round trip: mean gap {fixed_gap}")

# %%
if basin_study["missed_scenes"]:
    basin_scene, found = basin_study["missed_scenes"][0], "in the sample"
else:
    search = inversion_study.find_wrong_basin(pipe, image_size(pipe), SEED + STUDY_SIZE, BASIN_STEPS, BASIN_SEARCH)
    basin_scene = search["scene_seed"]
    found = f"by searching {search['searched']} more scenes" if basin_scene is not None else None
if basin_scene is None:
    print(f"DDIM inversion at S = {BASIN_STEPS} lands in another basin for none of scenes {SEED}.."
          f"{SEED + STUDY_SIZE + BASIN_SEARCH - 1}: no example to show (a rare event: see the rate above)")
else:
    basin_draw = scene_draws(image_size(pipe), [basin_scene])[0]
    wrong_basin = lab.wrong_basin_example(pipe, basin_draw.image, basin_draw.prompt, BASIN_STEPS)
    show(wrong_basin["figure"])
    print(f"scene {basin_scene} (found {found}): {basin_draw.prompt!r}, S = {BASIN_STEPS}, w = 1")
    for name, row in wrong_basin["rows"].items():
        print(f"  {name:12s} {row['psnr']:5.1f} dB, objects found: {row['objects']}")
    common.save_outputs(OUT, {"wrong_basin": wrong_basin["figure"]},
                        {"wrong_basin": {"scene": basin_scene, **{k: v["psnr"] for k, v in wrong_basin["rows"].items()}}})

# %% [markdown]
# **Which methods bring a wrong basin back?** Every scene DDIM carried into another basin here (those of the sample,
# or the example found by the search) is inverted again by the other methods at $S$ = `BASIN_STEPS`: fixed-point and
# edit-friendly at $w = 1$, where DDIM failed; null-text and negative-prompt at $w$ = `GUIDANCE` on DDIM's own
# $w = 1$ pivot. Null-text optimises each step's $\varnothing_t$ so that sampling lands on the pivot again, so it
# corrects the drift step by step; negative-prompt samples with the prompt as the null text, which at any $w$ *is*
# DDIM at $w = 1$ again: the control. "Back" means the gap to the VAE round trip is under 5 dB; the rate is over the
# wrong-basin scenes found, a small n (`diffusion_lab.studies.inversion.basin_fix_specs`).
#
# What `python pipelines/claims.py --labs 3m` measured (DDIM at $w = 1$, $S = 20$, scenes from 11 on):
# searching scenes 11-266, DDIM lands in another basin for 3 of the 256 (scenes 30, 156 and 157; mean gap
# 11.2 dB, 95% CI 7.3-18.9). Fixed-point and edit-friendly inversion at $w = 1$ bring back all 3 (3/3; 95% CI
# 44-100%; gaps -0.01 and 0.00 dB), and so does null-text at $w = 7.5$ (3/3; gap 1.34 dB, 1.18-1.56);
# negative-prompt brings back none (0/3): it is DDIM at $w = 1$ again. With n = 3 the rates say "each of the three",
# not "always".

# %%
fix_scenes = basin_study["missed_scenes"] or ([basin_scene] if basin_scene is not None else [])
if fix_scenes:
    basin_fix = inversion_study.method_study(pipe, scene_draws(image_size(pipe), fix_scenes),
                                             inversion_study.basin_fix_specs(GUIDANCE), BASIN_STEPS, edits=False,
                                             seed=SEED, inner_steps=NULL_TEXT_INNER_STEPS,
                                             null_text_settings=NULL_TEXT_SETTINGS)
    show_table(common.markdown_table(inversion_study.basin_fix_rows(basin_fix)))
    common.save_outputs(OUT, metrics={"basin_fix": {"scenes": fix_scenes, **{
        name: inversion_study.fixed_rate(basin_fix, name).as_dict() for name in basin_fix["methods"]}}})
    for claim in inversion_study.basin_fix_claims(basin_fix):
        print(f"{'holds' if claim['holds'] else 'DOES NOT HOLD'}: {claim['claim']} ({claim['evidence']})")
        assert claim["holds"], f"{claim['claim']}: {claim['evidence']}"

# %% [markdown]
# ## 5. Edit-friendly DDPM inversion: the bridge from lab 2's $\sigma_t$
#
# Everything above inverted the **deterministic** sampler ($\sigma_t = 0$). Lab 2's generalized posterior step adds
# fresh noise,
#
# $$x_{t-1} = \underbrace{\sqrt{\bar\alpha_{t-1}}\,\hat x_\theta + \sqrt{1 - \bar\alpha_{t-1} - \sigma_t^2}\;\hat\epsilon_\theta}_{\mu_t(x_t)}
# \;+\; \sigma_t \epsilon_t, \qquad \epsilon_t \sim \mathcal N(0, I),$$
#
# and no image determines those $\epsilon_t$ (the paper writes them $z_t$; here $z$ is a latent): running the step
# backwards is impossible for $\eta > 0$. Huberman-Spiegelglas, Kulikov & Michaeli (2024, arXiv:2304.06140) turn
# the question around: we may **choose** the noises.
#
# 1. Draw every $x_t$ *independently* from the forward marginal $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0,
#    (1 - \bar\alpha_t) I)$ (lab 1's noising, with a fresh forward noise for every $t$).
# 2. Solve lab 2's step for its noise: $\;\epsilon_t = \big(x_{t-1} - \mu_t(x_t)\big) / \sigma_t$.
#
# Sampling from $x_T$ with these $\epsilon_t$ in place of random ones lands on $x_{t-1}$ at every step, so it returns
# $x_0$ **exactly**, for any $\eta > 0$ and any guidance $w$ (the same model, prompt and $w$ compute $\mu_t$ both times).
# Nothing is approximated: no "$\hat\epsilon(x_{t-1}, t)$ instead of $\hat\epsilon(x_t, t)$", no optimisation. The price
# is that the $\epsilon_t$ are not white noise: they are larger than $\mathcal N(0, I)$ and carry the image's structure.
# That is what makes them *edit friendly*: sampled with another prompt, they keep the layout.

# %%
import numpy as np
from diffusion_lab.inversion import invert, reconstruct
from diffusion_lab.latents import decode_latents, encode_images
from diffusion_lab.metrics import psnr

ETAS = [0.3, 1.0] if QUICK else [0.2, 0.5, 1.0]
FRIENDLY_GUIDANCE = 3.5          # the paper inverts its source at w = 3.5
z_0 = encode_images(pipe, images)
rows = []
for eta in ETAS:
    inversion = invert(pipe, images, prompts, "edit_friendly", num_steps=STEPS, guidance_scale=FRIENDLY_GUIDANCE,
                       eta=eta, seed=SEED, progress=False)
    latents = reconstruct(pipe, inversion, output_type="latents", progress=False)
    reconstruction = decode_latents(pipe, latents)
    rows.append({
        "eta": eta,
        "latent max error": "< 1e-3" if float((latents - z_0).abs().max()) < 1e-3 else f"{float((latents - z_0).abs().max()):.1e}",
        "PSNR (dB)": round(float(np.mean(psnr(reconstruction, np.stack(images)))), 2),
        "VAE ceiling (dB)": round(vae["psnr"], 2),
        "noise map std": round(float(inversion.noise_maps.std()), 2),
    })
show_table("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
           + "\n".join("| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows))
common.save_outputs(OUT, metrics={"edit_friendly": rows})
assert all(row["PSNR (dB)"] > vae["psnr"] - 0.1 for row in rows), "edit-friendly inversion should reach the VAE ceiling"

# %% [markdown]
# Every row sits on the VAE ceiling: the latent error is float rounding. The last column is the price: the recorded
# noise maps are not $\mathcal N(0, I)$ (std 1). Compare the smaller $\eta$: with little noise per step ($\sigma_t$
# small), the same gap $x_{t-1} - \mu_t$ needs a LARGER $\epsilon_t$.
#
# **Question.** Why must the $x_t$ be drawn *independently* for each $t$, and not by lab 1's forward chain (one
# forward noise shared by all $t$, or DDPM's Markov chain)? *Hint:* with one shared forward noise, how far apart are
# $x_t$ and $x_{t-1}$, and what does that make $\epsilon_t$?

# %% [markdown]
# ### Editing with the recorded noises
#
# Two ways to use them: swap the prompt and sample with the same $\epsilon_t$ (the paper's edit; it also starts
# `skip_steps` steps late, which keeps more of the input), or hand the same $\epsilon_t$ to every row of a
# Prompt-to-Prompt batch (the source row then reproduces the input, the target rows take its attention maps).

# %%
from diffusion_lab.editing import edit_real

index = 0
inversion = invert(pipe, images[index], prompts[index], "edit_friendly", num_steps=STEPS,
                   guidance_scale=FRIENDLY_GUIDANCE, eta=1.0, seed=SEED, progress=False)
prompt_swap = reconstruct(pipe, inversion, targets[index], output_type="uint8", progress=False)[0]
skipped = reconstruct(pipe, inversion, targets[index], skip_steps=STEPS // 3, output_type="uint8", progress=False)[0]
p2p = edit_real(pipe, inversion, target_prompts=[targets[index]], progress=False)
row = common.image_row([images[index], vae["images"][index], p2p.source_image, prompt_swap, skipped,
                        p2p.edited_images[0]],
                       ["input", "VAE", "reconstruction", "prompt swap", f"skip {STEPS // 3}", "with P2P"], 6)
show(row)
common.save_outputs(OUT, {"edit_friendly_edits": row})

# %% [markdown]
# **Try it.** Change `skip_steps=STEPS // 3` in the cell above: 0 gives the prompt the most freedom, `STEPS - 1`
# returns (almost) the input. How does the edit compare with section 4's null-text edit (the same prompt swap from a
# null-text inversion), and what does the edit-friendly edit need that null-text does not (think of what is stored
# per image: $S$ noise maps of the latent's size, against $S$ text embeddings)?

# %% [markdown]
# ## Exercises (checked automatically)
#
# Implement the lecture's pieces yourself. Write your code between the lines where the student version says
# `# YOUR CODE HERE` (delete the `raise NotImplementedError()`), then run the **check** cell under it: it compares your
# function with the library's reference implementation (named in each exercise) on seeded inputs and says what is
# wrong if it differs. Use `torch` only; do not call the reference function itself. The same checks, plus a few
# hidden ones, grade your submission (see STUDENTS.md).

# %% tags=["exercises", "needs-setup"]
import torch
from diffusion_lab.course import checks

# %% [markdown]
# ### Exercise 3.1 — one DDIM inversion step
#
# From the less noisy $z_{t'}$ (`z_prev`, noise level `alpha_bar_prev`) and a noise estimate $\hat\epsilon$ (`epsilon`),
# return $z_t = \sqrt{\bar\alpha_t}\,\hat x_0 + \sqrt{1 - \bar\alpha_t}\,\hat\epsilon$ with
# $\hat x_0 = (z_{t'} - \sqrt{1 - \bar\alpha_{t'}}\,\hat\epsilon)/\sqrt{\bar\alpha_{t'}}$.
# Reference: `diffusion_lab.inversion.ddim_inversion_step`; the check also runs the sampling step on your $z_t$.

# %% nbgrader={"grade": false, "grade_id": "ex3_1_ddim_inversion_step", "locked": false, "schema_version": 3, "solution": true}
def ddim_inversion_step(z_prev, epsilon, alpha_bar_prev, alpha_bar_t):
    ### BEGIN SOLUTION
    alpha_bar_prev = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    x0_hat = (z_prev - (1 - alpha_bar_prev).sqrt() * epsilon) / alpha_bar_prev.sqrt()
    return (alpha_bar_t.sqrt() * x0_hat + (1 - alpha_bar_t).sqrt() * epsilon).to(z_prev.dtype)
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex3_1_check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_ddim_inversion_step(ddim_inversion_step)
# mistake: alpha_bar_prev and alpha_bar_t are swapped
# mistake: that is a forward-process step with the per-step alpha_t
# mistake: x0_hat is scaled by sqrt(alpha_bar_t), not by alpha_bar_t
# mistake: that is z_prev again

# %% [markdown]
# ### Exercise 3.2 — the inversion loop, and the image it reconstructs
#
# Write DDIM inversion with **your** step: start from $z_0$ and climb the sampler's steps backwards. `timesteps` are
# the sampler's descending $\tau_S > \dots > \tau_1$; the sampling step from $t = \tau_i$ goes to $t' = \tau_{i-1}$
# ($t' = -1$ after $\tau_1$, where `schedule.alpha_bar(-1)` is the final $\bar\alpha$). Visit these pairs
# $(t, t')$ from the least noisy one up, and for each one step from $z_{t'}$ to $z_t$ with
# `ddim_inversion_step(z, epsilon_at(z, t), schedule.alpha_bar(t'), schedule.alpha_bar(t))`: plain DDIM inversion
# evaluates the noise estimate at the target $t$ on the current $z_{t'}$. Return $z_T$ (after the $S$ steps).
# The check inverts the first test image (10 steps, $w = 1$), compares your $z_T$ with
# `diffusion_lab.inversion.invert_latents`, samples it back with the library's DDIM sampler and decodes it: its PSNR
# must reach the library's DDIM inversion (minus 0.5 dB). If exercise 3.1 is not right yet, this check uses the
# library's step in its place and tells you so.

# %% nbgrader={"grade": false, "grade_id": "ex3_2_ddim_invert", "locked": false, "schema_version": 3, "solution": true}
def ddim_invert(z_0, epsilon_at, schedule, timesteps):
    """z_0: (B, C, H, W); epsilon_at(z, t) -> eps_hat (B, C, H, W); timesteps: (S,) descending -> z_T (B, C, H, W)."""
    ### BEGIN SOLUTION
    steps = [int(t) for t in timesteps]
    z = z_0
    for t, t_prev in reversed(list(zip(steps, steps[1:] + [-1]))):
        z = ddim_inversion_step(z, epsilon_at(z, t), schedule.alpha_bar(t_prev), schedule.alpha_bar(t))
    return z
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex3_2_check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_ddim_invert(ddim_invert, pipe, images[0], prompts[0], num_steps=10)
# mistake: the loop runs in the sampling order
# mistake: eps_hat is evaluated at t_prev
# mistake: the loop stops one step short
# mistake: that is z_0 itself
### BEGIN HIDDEN TESTS
checks.check_ddim_invert(ddim_invert, pipe, images[-1], prompts[-1], num_steps=5)  # another image, 5 steps
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 3.3 — the inner loop of null-text inversion
#
# One timestep of Algorithm 1 (Mokady et al. 2022): starting from `uncond_embedding`, take `inner_steps` Adam steps
# (learning rate `learning_rate`) on the embedding $\varnothing$ to minimise
# $\lVert \mathrm{step}(\bar z_t, \hat\epsilon_w(\varnothing), t \to t') - z^*_{t'} \rVert^2$ (mean squared error), where
# $\hat\epsilon_w(\varnothing) = \hat\epsilon(\bar z_t, \varnothing) + w\,(\hat\epsilon(\bar z_t, c) - \hat\epsilon(\bar z_t, \varnothing))$ and
# step is the DDIM step ($\eta = 0$). The network: `model.conditional_output(z, t, embeddings)`; the step:
# `diffusion_lab.posterior.generalized_posterior_step(z, output, t, t_prev, model.schedule).prev_sample`.
# Return the optimised embedding. Reference: `diffusion_lab.inversion.optimize_null_text` (no early stop here).

# %% nbgrader={"grade": false, "grade_id": "ex3_3_null_text_inner_loop", "locked": false, "schema_version": 3, "solution": true}
from diffusion_lab.posterior import generalized_posterior_step


def null_text_inner_loop(model, z_bar, target, t, t_prev, text_embeddings, uncond_embedding, guidance_scale,
                         inner_steps, learning_rate):
    ### BEGIN SOLUTION
    with torch.no_grad():
        cond_output = model.conditional_output(z_bar, t, text_embeddings)
    embedding = uncond_embedding.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([embedding], lr=learning_rate)
    for _ in range(inner_steps):
        with torch.enable_grad():
            uncond_output = model.conditional_output(z_bar, t, embedding)
            guided = uncond_output + guidance_scale * (cond_output - uncond_output)
            z_prev = generalized_posterior_step(z_bar, guided, t, t_prev, model.schedule).prev_sample
            loss = torch.nn.functional.mse_loss(z_prev, target)
            (embedding.grad,) = torch.autograd.grad(loss, [embedding])  # gradients for the embedding only
        optimizer.step()
    return embedding.detach()
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex3_3_check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_null_text_inner_loop(null_text_inner_loop, pipe)
# mistake: the embedding did not change
# mistake: the embedding moved uphill
# mistake: your loop took
### BEGIN HIDDEN TESTS
checks.check_null_text_inner_loop(null_text_inner_loop, pipe, inner_steps=2, learning_rate=5e-3)
### END HIDDEN TESTS

# %% tags=["finish"]
# NBVAL_IGNORE_OUTPUT
seconds = time.perf_counter() - START
common.save_outputs(OUT, metrics={"seconds": seconds, "model": MODEL, "quick": QUICK})
print(f"lab ran in {seconds:.0f} s; figures and metrics.json are in OUT_DIR ({OUT.name})")

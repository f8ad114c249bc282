"""Checks of the labs' exercises: the student's function against the library's reference, with feedback.

Each `check_*` calls the student's function on seeded inputs, compares the result with the reference function
of diffusion_lab that implements the same equation (named in the check's docstring) within a tolerance, and
raises `ExerciseFailed` (an AssertionError, so nbgrader scores the cell 0) with a message that says what is
wrong: not implemented yet, wrong shape, the library's reference called instead of the formula (scores 0), a known
mistake recognised (square roots forgotten, alpha_bar_t and alpha_bar_{t-1} swapped, ...: each check's list is
beside it in labs/src, and tests/test_course_mistakes.py plants each one), or how far off the result is. Stochastic
results are checked with metric thresholds (statistics of many draws, reconstruction PSNR). On success a check
prints one line and returns None: a check cell shows no value (nbgrader would read a cell's value as partial
credit, and warned on "True").

In JupyterLab a failed check shows its message only (ExerciseFailed._render_traceback_: no traceback into this
file). What the student's function writes to stderr or warns while a check runs is caught (it costs nothing: an
nbgrader check cell that writes to stderr would score 0) and mentioned after the "passed" line.

Hidden checks are not here: their code sits in the lab sources between `### BEGIN HIDDEN TESTS` and
`### END HIDDEN TESTS`, and so only in the autograder bundle (the installed package carries none); they use the
public helpers of this module (`exercise_check`, `call_student`, `as_tensor`, `compare`, `passed`).

A check judges its own exercise only. When the student's function calls the function of an earlier exercise (lab 1:
noise_to_strength calls forward_marginal_sample and strength_timesteps; lab 3: ddim_invert calls ddim_inversion_step;
see EARLIER_EXERCISES), an earlier function that is not right yet is replaced by the reference while the check runs,
and the feedback says so: one mistake costs one exercise, and the message points at the exercise where it is.

The exercise cells of labs/src/*.py call these checks; `python -m diffusion_lab course build` writes the student
notebooks (solutions removed) and `course grade` runs the same checks on the submissions.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import math
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

ATOL = 1e-5


class ExerciseFailed(AssertionError):
    """An exercise's check failed; the message says what is wrong.

    IPython shows an exception that has `_render_traceback_` by the lines it returns instead of a traceback: the
    student sees the message, not 20-30 lines of this module. nbgrader and `course grade` still see an error
    output (ename ExerciseFailed) and score the cell 0."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mExerciseFailed\x1b[0m: {self}"]


def exercise_check(check: Callable) -> Callable:
    """Decorator of every check: what the student's code writes to stderr and the warnings it raises while the check
    runs are caught (a correct solution that prints loses nothing) and summed up after the "passed" line."""

    @functools.wraps(check)
    def run(*args, **kwargs):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check(*args, **kwargs)
        said = [line for line in stderr.getvalue().splitlines() if line.strip()]
        said += [f"{w.category.__name__}: {w.message}" for w in caught]
        if said:
            print(f"  note: your code wrote {len(said)} line(s) to stderr or as warnings while checked (that costs "
                  f"nothing), first: {said[0][:120]}")
        return None  # passed (a failure raises ExerciseFailed); no value for the cell to show

    return run


# exercise function -> the library functions that ARE its answer: a solution that calls one of them (directly, by
# an alias, or through another library function) scores 0 with a message saying so
REFERENCES: dict[str, tuple[str, ...]] = {
    "forward_marginal_sample": ("diffusion_lab.posterior:forward_marginal_sample",
                                "diffusion_lab.posterior:forward_marginal_mean_std"),
    "strength_timesteps": ("diffusion_lab.naive_noising:strength_timesteps",
                           "diffusion_lab.naive_noising:timesteps_left_after_noising"),
    "noise_to_strength": ("diffusion_lab.naive_noising:noise_latents_to_strength",
                          "diffusion_lab.naive_noising:noise_image_to_strength"),
    "sigma_from_eta": ("diffusion_lab.posterior:sigma_from_eta",),
    "sigma_hat": ("diffusion_lab.posterior:sigma_hat",),
    "ddim_step": ("diffusion_lab.posterior:generalized_posterior_step", "diffusion_lab.posterior:generalized_posterior_mean",
                  "diffusion_lab.posterior:sample_generalized_posterior"),
    "ddim_inversion_step": ("diffusion_lab.inversion.step:ddim_inversion_step",),
    "ddim_invert": ("diffusion_lab.inversion.fixed_point:invert_latents",),
    "null_text_inner_loop": ("diffusion_lab.inversion.null_text:optimize_null_text",),
    "replace_cross_attention": ("diffusion_lab.attention.controllers:AttentionReplace.replace_cross_attention",),
    "refine_alignment": ("diffusion_lab.attention.tokens:refinement_alignment",
                         "diffusion_lab.attention.tokens:_global_alignment"),
    "local_blend_mask": ("diffusion_lab.attention.controllers:LocalBlend.mask",),
}


def _reference_codes(name: str) -> dict:
    """{code object: 'module.function'} of the library functions that are exercise `name`'s answer."""
    codes = {}
    for target in REFERENCES.get(name, ()):
        module_name, _, attribute = target.partition(":")
        value = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
        codes[getattr(value, "__code__", None)] = f"{module_name}.{attribute}"
    codes.pop(None, None)
    return codes


_WATCH = {"references": True}


@contextlib.contextmanager
def reference_calls_allowed():
    """While the block runs, calling the library's reference is not refused (tests of the checks' stand-ins)."""
    previous, _WATCH["references"] = _WATCH["references"], False
    try:
        yield
    finally:
        _WATCH["references"] = previous


def _call_watched(name: str, function: Callable, args, kwargs):
    """function(*args, **kwargs), raising ExerciseFailed if it ran the library's own answer to exercise `name`
    (a profile hook sees every Python call made while it runs)."""
    codes = _reference_codes(name) if _WATCH["references"] else {}
    if not codes:
        return function(*args, **kwargs)
    called: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes and not called:
            called.append(codes[frame.f_code])

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        result = function(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    if called:
        raise ExerciseFailed(f"{name} calls the library's reference {called[0]} (or an alias of it): that is the "
                             "answer, not yours, and scores 0. Write the formula yourself with torch")
    return result


def _call(name: str, function: Callable, *args, **kwargs):
    """Call the student's function; turn 'not done yet', crashes and calls of the reference into feedback."""
    try:
        return _call_watched(name, function, args, kwargs)
    except NotImplementedError:
        raise ExerciseFailed(f"{name}: not implemented yet. Replace `raise NotImplementedError()` by your code.") from None
    except ExerciseFailed:
        raise
    except Exception as error:  # the student's code crashed: say where, not just that it failed
        raise ExerciseFailed(f"{name} raised {type(error).__name__}: {error}") from error


def _as_tensor(name: str, value, like: torch.Tensor | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value, dtype=torch.float64)
        except Exception:
            raise ExerciseFailed(f"{name} must return a torch.Tensor, got {type(value).__name__}") from None
    if like is not None and tuple(value.shape) != tuple(like.shape):
        raise ExerciseFailed(f"{name} returned shape {tuple(value.shape)}, expected {tuple(like.shape)}")
    return value


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL, rtol: float = 1e-4) -> bool:
    return bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True))


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _compare(name: str, result, expected: torch.Tensor, mistakes: dict[str, torch.Tensor] | None = None,
             atol: float = ATOL, what: str = "") -> None:
    """Raise with a specific message when `result` is one of the known `mistakes`, else with the error size."""
    result = _as_tensor(name, result, expected)
    if _close(result, expected, atol):
        return
    for message, wrong in (mistakes or {}).items():
        if _close(result, wrong, atol):
            raise ExerciseFailed(f"{name}{what}: {message}")
    raise ExerciseFailed(f"{name}{what}: differs from the reference by up to {_max_error(result, expected):.3g} "
                         f"(tolerance {atol:g}); compare your formula with the one in the text above")


def _passed(message: str) -> bool:
    print(f"passed: {message}")
    return True


# the public helpers hidden checks (in the lab sources) are written with
call_student, as_tensor, compare, passed = _call, _as_tensor, _compare, _passed


def _example_schedule():
    from diffusion_lab.schedules import NoiseSchedule

    return NoiseSchedule.create("scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False)


# ---------------------------------------------------------------------------------------------------------------
# Chained exercises: a check judges its own exercise only
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Earlier:
    """An earlier exercise whose function a later exercise's solution calls: its label, its check, and a reference
    with the signature the exercise asks for (what replaces the student's function when it is not right yet)."""

    label: str
    check: Callable
    reference: Callable


def _earlier_problem(check: Callable, function) -> str | None:
    """None when `function` passes `check` (run quietly), else what the check says."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            check(function)
    except Exception as error:  # ExerciseFailed, or a crash inside the check on a strange return value
        return str(error) or type(error).__name__
    return None


def _global_names(function) -> set[str]:
    """The global (and attribute) names the code of `function` and of its nested functions refers to."""
    code = getattr(function, "__code__", None)
    names: set[str] = set()
    stack = [code] if code is not None else []
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return names


_MISSING = object()


@contextlib.contextmanager
def _earlier_exercises_replaced(student: Callable, earlier: dict[str, Earlier]):
    """While the block runs, each earlier exercise's function that `student` calls through the notebook's globals and
    that is not right yet (its check fails) or not defined is the reference. Yields the notes for the feedback; the
    notebook's names are restored afterwards."""
    namespace = getattr(student, "__globals__", None)
    notes: list[str] = []
    replaced: dict[str, object] = {}
    if isinstance(namespace, dict):
        used = _global_names(student)
        for name, exercise in earlier.items():
            if name not in used:
                continue
            if name in namespace:
                if _earlier_problem(exercise.check, namespace[name]) is None:
                    continue
                state = "is not right yet"
            else:
                state = "is not defined"
            replaced[name] = namespace.get(name, _MISSING)
            namespace[name] = exercise.reference
            notes.append(f"{exercise.label} ({name}) {state}: this check used the library's {name} in its place, "
                         f"so the result judges {getattr(student, '__name__', 'your function')} alone; fix {name} in "
                         f"{exercise.label}")
    try:
        yield notes
    finally:
        for name, previous in replaced.items():
            if previous is _MISSING:
                namespace.pop(name, None)
            else:
                namespace[name] = previous


def _judged_alone(student: Callable, earlier: dict[str, Earlier], run: Callable[[], str]) -> bool:
    """Run the body of a check (`run` returns the success message) with the earlier exercises replaced where needed;
    the notes go into the failure message or after the success line."""
    with _earlier_exercises_replaced(student, earlier) as notes:
        try:
            message = run()
        except ExerciseFailed as error:
            if not notes:
                raise
            raise ExerciseFailed(f"{error} (note: {'; '.join(notes)})") from None
    for note in notes:
        message += f"\n  note: {note}"
    return _passed(message)


# ---------------------------------------------------------------------------------------------------------------
# Lab 1: the forward process and naive editing
# ---------------------------------------------------------------------------------------------------------------


@exercise_check
def check_forward_marginal_sample(student: Callable) -> bool:
    """student(x_0, alpha_bar_t, noise) -> x_t; reference: posterior.forward_marginal_sample (DDPM eq. 4)."""
    from diffusion_lab.posterior import forward_marginal_sample

    name = "forward_marginal_sample"
    generator = torch.Generator().manual_seed(0)
    x_0 = torch.randn(2, 4, 8, 8, generator=generator)
    noise = torch.randn(2, 4, 8, 8, generator=generator)
    for alpha_bar in (0.9, 0.3, 0.02):
        expected = forward_marginal_sample(x_0, alpha_bar, noise=noise)
        a = torch.tensor(alpha_bar, dtype=torch.float64)
        mistakes = {
            "the square roots are missing: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps":
                (a * x_0 + (1 - a) * noise).float(),
            "x_0 and eps have each other's coefficients: x_0 is scaled by sqrt(alpha_bar_t), the noise by "
            "sqrt(1 - alpha_bar_t)": ((1 - a).sqrt() * x_0 + a.sqrt() * noise).float(),
            "the noise term is sqrt(1 - alpha_bar_t) eps, a standard deviation, not sqrt(alpha_bar_t) eps":
                (a.sqrt() * x_0 + a.sqrt() * noise).float(),
            "the noise is ignored: add sqrt(1 - alpha_bar_t) * noise": (a.sqrt() * x_0).float(),
        }
        result = _call(name, student, x_0, alpha_bar, noise)
        _compare(name, result, expected, mistakes, what=f" at alpha_bar_t={alpha_bar}")
    return _passed("x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps matches posterior.forward_marginal_sample")


@exercise_check
def check_noise_to_strength(student: Callable) -> bool:
    """student(z_0, schedule, num_steps, strength, noise) -> (z_t, timesteps left); reference:
    naive_noising.noise_latents_to_strength (z_t at the first timestep left; z_0 itself when none is left). Judged
    alone: where the student's function calls forward_marginal_sample / strength_timesteps (exercises 1.1 / 1.2) and
    those are not right yet, the references stand in for them (EARLIER_EXERCISES)."""
    from diffusion_lab.naive_noising import noise_latents_to_strength

    name = "noise_to_strength"
    schedule = _example_schedule()
    generator = torch.Generator().manual_seed(6)
    z_0 = torch.randn(2, 4, 8, 8, generator=generator)
    noise = torch.randn(2, 4, 8, 8, generator=generator)

    def run() -> str:
        for num_steps, strength in ((50, 0.0), (50, 0.3), (20, 0.75), (10, 1.0)):
            expected = noise_latents_to_strength(z_0, schedule, strength, num_steps, noise=noise)
            result = _call(name, student, z_0, schedule, num_steps, strength, noise)
            if not isinstance(result, tuple) or len(result) != 2:
                raise ExerciseFailed(f"{name} must return a pair (z_t, timesteps), got {type(result).__name__}")
            z_t, timesteps = result
            timesteps = torch.as_tensor(timesteps, dtype=torch.long).flatten()
            if timesteps.tolist() != expected.timesteps.tolist():
                raise ExerciseFailed(f"{name}(S={num_steps}, strength={strength}): timesteps left "
                                     f"{timesteps.tolist()[:5]}..., expected {expected.timesteps.tolist()[:5]}... "
                                     "(strength_timesteps(schedule.timesteps(num_steps), strength), exercise 1.2)")
            first_of_all = schedule.alpha_bar(int(schedule.timesteps(num_steps)[0]))
            wrong_level = {
                "z_t is noised to the first of ALL S timesteps (almost pure noise); noise it to the first timestep "
                "LEFT after noising (the first of strength_timesteps(...))":
                    (first_of_all.sqrt() * z_0 + (1 - first_of_all).sqrt() * noise).float(),
                "the strength is not a noise level alpha_bar: it says how many of the S steps are left; noise to "
                "alpha_bar of the first timestep left": (math.sqrt(1 - strength) * z_0 + math.sqrt(strength) * noise),
            }
            if len(expected.timesteps) > 1:
                a = schedule.alpha_bar(int(expected.timesteps[-1]))
                wrong_level["z_t is noised to the LAST timestep left; noise to the first (largest) one, where "
                            "sampling starts"] = (a.sqrt() * z_0 + (1 - a).sqrt() * noise).float()
            _compare(name, z_t, expected.latents, wrong_level, what=f"(S={num_steps}, strength={strength})")
        return "noising to a strength matches naive_noising.noise_latents_to_strength"

    return _judged_alone(student, EARLIER_EXERCISES[name], run)


@exercise_check
def check_strength_timesteps(student: Callable) -> bool:
    """student(timesteps, strength) -> the timesteps still to run; reference: naive_noising.strength_timesteps."""
    from diffusion_lab.naive_noising import strength_timesteps

    name = "strength_timesteps"
    schedule = _example_schedule()
    for num_steps in (10, 50):
        timesteps = schedule.timesteps(num_steps)
        for strength in (0.0, 0.1, 0.25, 0.5, 0.77, 1.0):
            expected = strength_timesteps(schedule, num_steps, strength)
            result = _call(name, student, timesteps, strength)
            result = torch.as_tensor(result, dtype=torch.long).flatten()
            if result.tolist() != expected.tolist():
                hint = ""
                if len(result) > 1 and sorted(result.tolist(), reverse=True) == expected.tolist():
                    hint = "; the steps left keep the sampler's order, descending (the noisiest first)"
                elif len(result) == len(expected) and len(result) and result[0] != expected[0]:
                    hint = "; keep the LAST int(S * strength) timesteps (the least noisy ones), not the first"
                elif len(result) == round(num_steps * strength) != len(expected):
                    hint = f"; round() keeps one step too many here: int(S * strength) = {len(expected)} rounds down"
                elif len(result) != len(expected):
                    hint = f"; S={num_steps}, strength={strength}: int(S * strength) = {len(expected)} steps"
                raise ExerciseFailed(f"{name}(S={num_steps}, strength={strength}) gave {result.tolist()[:6]}..., "
                                     f"expected {expected.tolist()[:6]}...{hint}")
    return _passed("the timesteps left after noising match naive_noising.strength_timesteps")


# ---------------------------------------------------------------------------------------------------------------
# Lab 2: sigma_t, eta and the DDIM step
# ---------------------------------------------------------------------------------------------------------------

_ALPHA_PAIRS = ((0.5, 0.6), (0.05, 0.3), (0.9, 0.95), (0.001, 0.02))


@exercise_check
def check_sigma_from_eta(student: Callable) -> bool:
    """student(alpha_bar_t, alpha_bar_prev, eta) -> sigma_t; reference: posterior.sigma_from_eta (DDIM eq. 16)."""
    from diffusion_lab.posterior import sigma_from_eta

    name = "sigma_from_eta"
    for alpha_bar_t, alpha_bar_prev in _ALPHA_PAIRS:
        for eta in (0.0, 0.5, 1.0):
            expected = sigma_from_eta(alpha_bar_t, alpha_bar_prev, eta)
            t, p = torch.tensor(alpha_bar_t, dtype=torch.float64), torch.tensor(alpha_bar_prev, dtype=torch.float64)
            mistakes = {
                "alpha_bar_t and alpha_bar_{t-1} are swapped (alpha_bar_{t-1} > alpha_bar_t: the earlier step is "
                "less noisy)": eta * ((1 - t) / (1 - p) * (1 - p / t)).sqrt(),
                "the square root is missing: sigma_t is a standard deviation": eta * (1 - p) / (1 - t) * (1 - t / p),
                "eta multiplies the standard deviation, not the variance": (eta * (1 - p) / (1 - t) * (1 - t / p)).sqrt(),
                "eta is squared: sigma_t = eta * sqrt(...), eta to the first power":
                    eta**2 * ((1 - p) / (1 - t) * (1 - t / p)).sqrt(),
                "the square root is of 1 - alpha_bar_t / alpha_bar_{t-1}, not of the ratio alone (1 - sqrt(ratio))":
                    eta * ((1 - p) / (1 - t) * (1 - (t / p).sqrt())).sqrt(),
            }
            result = _call(name, student, alpha_bar_t, alpha_bar_prev, eta)
            _compare(name, result, expected, mistakes, what=f"(alpha_bar_t={alpha_bar_t}, alpha_bar_prev={alpha_bar_prev}, eta={eta})")
    return _passed("sigma_t(eta) matches posterior.sigma_from_eta")


@exercise_check
def check_sigma_hat(student: Callable) -> bool:
    """student(alpha_bar_t, alpha_bar_prev) -> sigma-hat_t; reference: posterior.sigma_hat (DDIM appendix D.3)."""
    from diffusion_lab.posterior import sigma_from_eta, sigma_hat

    name = "sigma_hat"
    for alpha_bar_t, alpha_bar_prev in _ALPHA_PAIRS:
        expected = sigma_hat(alpha_bar_t, alpha_bar_prev)
        t, p = torch.tensor(alpha_bar_t, dtype=torch.float64), torch.tensor(alpha_bar_prev, dtype=torch.float64)
        mistakes = {
            "that is sigma_t(eta=1), DDPM's posterior std; sigma-hat is the larger sqrt(1 - alpha_bar_t / alpha_bar_{t-1})":
                sigma_from_eta(alpha_bar_t, alpha_bar_prev, 1.0),
            "the square root is missing": 1 - t / p,
            "the ratio is upside down: alpha_bar_t / alpha_bar_{t-1}, with alpha_bar_t the smaller":
                (1 - p / t).sqrt(),
            "the square root is of the whole 1 - alpha_bar_t / alpha_bar_{t-1}, not of the ratio alone (1 - sqrt(ratio))":
                1 - (t / p).sqrt(),
        }
        result = _call(name, student, alpha_bar_t, alpha_bar_prev)
        _compare(name, result, expected, mistakes, what=f"(alpha_bar_t={alpha_bar_t}, alpha_bar_prev={alpha_bar_prev})")
    return _passed("sigma-hat matches posterior.sigma_hat")


@exercise_check
def check_ddim_step(student: Callable) -> bool:
    """student(x_t, epsilon, alpha_bar_t, alpha_bar_prev, sigma_t, noise) -> x_{t-1};
    reference: posterior.generalized_posterior_step (an epsilon-predicting model's output is epsilon)."""
    from diffusion_lab.posterior import generalized_posterior_step, sigma_from_eta, x0_from_epsilon

    name = "ddim_step"
    schedule = _example_schedule()
    generator = torch.Generator().manual_seed(2)
    x_t = torch.randn(2, 4, 8, 8, generator=generator)
    epsilon = torch.randn(2, 4, 8, 8, generator=generator)
    noise = torch.randn(2, 4, 8, 8, generator=generator)
    for t, t_prev in ((981, 961), (501, 401), (101, 1), (1, -1)):
        for eta in (0.0, 0.5, 1.0):
            a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
            sigma = sigma_from_eta(a_t, a_prev, eta)
            expected = generalized_posterior_step(x_t, epsilon, t, t_prev, schedule, eta=eta,
                                                  noise=noise if eta > 0 else None).prev_sample
            x0_hat = x0_from_epsilon(x_t, epsilon, a_t)
            mistakes = {
                "the noise term sigma_t * noise is missing": (a_prev.sqrt() * x0_hat + (1 - a_prev - sigma**2).sqrt() * epsilon).float(),
                "the direction pointing to x_t must use sqrt(1 - alpha_bar_{t-1} - sigma_t^2), not sqrt(1 - alpha_bar_{t-1})":
                    (a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * epsilon + sigma * noise).float(),
                "predicted x_0 is (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t): check its square roots":
                    (a_prev.sqrt() * (x_t - (1 - a_t) * epsilon) / a_t + (1 - a_prev - sigma**2).sqrt() * epsilon + sigma * noise).float(),
                "the direction pointing to x_t is sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps, not sqrt(alpha_bar_{t-1}) eps":
                    (a_prev.sqrt() * x0_hat + a_prev.sqrt() * epsilon + sigma * noise).float(),
                "predicted x_0 is scaled by sqrt(alpha_bar_{t-1}), not by alpha_bar_{t-1} (its square root is missing)":
                    (a_prev * x0_hat + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * epsilon + sigma * noise).float(),
                "predicted x_0 uses the per-step alpha_t = alpha_bar_t / alpha_bar_{t-1}; it needs the cumulative "
                "alpha_bar_t: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)":
                    (a_prev.sqrt() * (x_t - (1 - a_t / a_prev).sqrt() * epsilon) / (a_t / a_prev).sqrt()
                     + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * epsilon + sigma * noise).float(),
            }
            result = _call(name, student, x_t, epsilon, a_t, a_prev, sigma, noise)
            _compare(name, result, expected, mistakes, atol=1e-4, what=f"(t={t} -> {t_prev}, eta={eta})")
    return _passed("x_{t-1} = predicted x_0 + direction to x_t + noise matches posterior.generalized_posterior_step")


# ---------------------------------------------------------------------------------------------------------------
# Lab 3: DDIM inversion and null-text inversion
# ---------------------------------------------------------------------------------------------------------------


@exercise_check
def check_ddim_inversion_step(student: Callable) -> bool:
    """student(z_prev, epsilon, alpha_bar_prev, alpha_bar_t) -> z_t; reference: inversion.ddim_inversion_step, and
    the sampling step (posterior.generalized_posterior_step, eta = 0) must undo it exactly."""
    from diffusion_lab.inversion import ddim_inversion_step
    from diffusion_lab.posterior import generalized_posterior_step, x0_from_epsilon

    name = "ddim_inversion_step"
    schedule = _example_schedule()
    generator = torch.Generator().manual_seed(3)
    z_prev = torch.randn(2, 4, 8, 8, generator=generator).double()
    epsilon = torch.randn(2, 4, 8, 8, generator=generator).double()
    for t_prev, t in ((-1, 1), (1, 101), (401, 501), (961, 981)):
        a_prev, a_t = schedule.alpha_bar(t_prev), schedule.alpha_bar(t)
        expected = ddim_inversion_step(z_prev, epsilon, a_prev, a_t)
        mistakes = {
            "alpha_bar_prev and alpha_bar_t are swapped: x0_hat comes from z_prev with alpha_bar_prev, z_t uses alpha_bar_t":
                ddim_inversion_step(z_prev, epsilon, a_t, a_prev),
            "that is z_prev again: inversion moves to the NOISIER timestep t": z_prev,
            "that is a forward-process step with the per-step alpha_t = alpha_bar_t / alpha_bar_prev; inversion goes "
            "through x0_hat: z_t = sqrt(alpha_bar_t) x0_hat + sqrt(1 - alpha_bar_t) eps":
                (a_t / a_prev).sqrt() * z_prev + (1 - a_t / a_prev).sqrt() * epsilon,
            "x0_hat is scaled by sqrt(alpha_bar_t), not by alpha_bar_t (its square root is missing)":
                a_t * x0_from_epsilon(z_prev, epsilon, a_prev) + (1 - a_t).sqrt() * epsilon,
        }
        result = _call(name, student, z_prev, epsilon, a_prev, a_t)
        _compare(name, result, expected, mistakes, atol=1e-6, what=f"(t_prev={t_prev} -> t={t})")
        back = generalized_posterior_step(_as_tensor(name, result), epsilon, t, t_prev, schedule).prev_sample
        if not _close(back, z_prev, 1e-6):
            raise ExerciseFailed(f"{name}: the DDIM sampling step does not bring z_t back to z_prev")
    return _passed("one inversion step matches inversion.ddim_inversion_step and the sampling step undoes it")


@exercise_check
def check_null_text_inner_loop(student: Callable, pipe, inner_steps: int = 3, learning_rate: float = 1e-2) -> bool:
    """student(model, z_bar, target, t, t_prev, text_embeddings, uncond_embedding, guidance_scale, inner_steps,
    learning_rate) -> optimised unconditional embedding; reference: one timestep of inversion.optimize_null_text
    (Mokady et al. 2022, Algorithm 1; no early stop, constant learning rate)."""
    from diffusion_lab.inversion import ConditionalModel, NullTextSettings, optimize_null_text
    from diffusion_lab.text import encode_prompts

    name = "null_text_inner_loop"
    model = ConditionalModel.from_pipeline(pipe)
    device = pipe.unet.device
    generator = torch.Generator().manual_seed(4)
    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    z_bar = torch.randn(shape, generator=generator).to(device)
    target = (0.98 * z_bar + 0.05 * torch.randn(shape, generator=generator).to(device))
    t, t_prev = 101, -1  # the last sampling step (a one-step subsequence [t]: t_prev = -1, alpha_bar = final)
    text = encode_prompts(pipe, ["a large red circle on a gray background"]).to(device)
    uncond = encode_prompts(pipe, [""]).to(device)
    settings = NullTextSettings(inner_steps=inner_steps, learning_rate=learning_rate, learning_rate_decay=0.0,
                                early_stop_epsilon=-1.0, early_stop_growth=0.0)
    reference = optimize_null_text(model, torch.stack([z_bar, target]), [t], text, uncond, 7.5, settings,
                                   progress=False)
    expected = reference.uncond_embeddings[0]
    result = _call(name, student, model, z_bar, target, t, t_prev, text, uncond.clone(), 7.5, inner_steps, learning_rate)
    result = _as_tensor(name, result, expected).detach()
    if _close(result, uncond, 1e-7):
        raise ExerciseFailed(f"{name}: the embedding did not change: return the optimised embedding, and step the "
                             "optimizer after computing the loss's gradient")
    if not _close(result, expected, 1e-4, 1e-3):
        moved, wanted = (result - uncond).flatten().double(), (expected - uncond).flatten().double()
        if float(torch.nn.functional.cosine_similarity(moved, wanted, dim=0)) < -0.5:
            raise ExerciseFailed(f"{name}: the embedding moved uphill, away from the reference's: minimise the loss "
                                 "(optimizer.step() after the gradient of +MSE), do not maximise it")
        for steps in sorted({1, inner_steps - 1, inner_steps + 1} - {0, inner_steps}):
            other = optimize_null_text(model, torch.stack([z_bar, target]), [t], text, uncond, 7.5,
                                       NullTextSettings(inner_steps=steps, learning_rate=learning_rate,
                                                        learning_rate_decay=0.0, early_stop_epsilon=-1.0,
                                                        early_stop_growth=0.0), progress=False)
            if _close(result, other.uncond_embeddings[0], 1e-4, 1e-3):
                raise ExerciseFailed(f"{name}: your loop took {steps} Adam step(s); take exactly inner_steps = "
                                     f"{inner_steps}")
        raise ExerciseFailed(
            f"{name}: after {inner_steps} Adam steps the embedding differs from the reference by up to "
            f"{_max_error(result, expected):.3g}. The loss is the MSE between step(z_bar, eps_w(embedding)) and the "
            "target, with eps_w = eps_uncond + w (eps_cond - eps_uncond) and step the DDIM step (eta = 0) from t to "
            "t_prev; only the embedding is optimised (Adam, the given learning rate)")
    return _passed(f"{inner_steps} inner steps match one timestep of inversion.optimize_null_text")


def _inversion_variant(z_0, epsilon_at, schedule, timesteps, order: str = "right", noise_at: str = "t",
                       steps: int | None = None):
    """DDIM inversion with the library's step, right or with one of exercise 3.2's plausible mistakes (the loop
    visited in sampling order, eps evaluated at t_prev, a step left out)."""
    from diffusion_lab.inversion import ddim_inversion_step
    from diffusion_lab.schedules import timestep_pairs

    pairs = timestep_pairs(timesteps)
    visited = list(reversed(pairs)) if order == "right" else pairs
    z = z_0
    for t, t_prev in visited[: steps if steps is not None else len(visited)]:
        epsilon = epsilon_at(z, t if noise_at == "t" else t_prev)
        z = ddim_inversion_step(z, epsilon, schedule.alpha_bar(t_prev), schedule.alpha_bar(t))
    return z


@exercise_check
def check_ddim_invert(student: Callable, pipe, image, prompt: str, num_steps: int = 10, margin_db: float = 0.5) -> bool:
    """student(z_0, epsilon_at, schedule, timesteps) -> z_T: the DDIM inversion loop (w = 1) that calls exercise
    3.1's step; reference: inversion.invert_latents (z_T within a tolerance). Then a metric threshold: sampling z_T
    back with the library (DDIM, eta = 0) and decoding must give the image's PSNR of the library's own inversion
    minus `margin_db`. Judged alone: a wrong exercise 3.1 step is replaced by the reference (EARLIER_EXERCISES)."""
    import numpy as np

    from diffusion_lab.denoisers import TextConditionedDenoiser
    from diffusion_lab.inversion import invert_latents
    from diffusion_lab.latents import decode_latents, encode_images
    from diffusion_lab.metrics import psnr
    from diffusion_lab.posterior import predict_epsilon
    from diffusion_lab.sampling import sample
    from diffusion_lab.schedules import NoiseSchedule, timestep_pairs
    from diffusion_lab.text import encode_prompts

    name = "ddim_invert"
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    timesteps = schedule.timesteps(num_steps)
    denoiser = TextConditionedDenoiser(pipe.unet, encode_prompts(pipe, [prompt]).to(pipe.unet.device))
    step_of = {t: index for index, (t, _) in enumerate(timestep_pairs(timesteps))}

    def epsilon_at(z, t):  # eps_hat(z, t): the network's noise estimate at timestep t
        t = int(t)
        return predict_epsilon(denoiser(z, t, step_of.get(t, 0)), z, schedule.alpha_bar(t), schedule.prediction_type)

    reference_image = np.asarray(image.convert("RGB"))

    def run() -> str:
        with torch.no_grad():
            z_0 = encode_images(pipe, [image])  # (1, C, h, w)
            expected = invert_latents(denoiser, z_0, schedule, timesteps, progress=False).latents[0]
            mistakes = {
                "the loop runs in the sampling order; inversion starts at the least noisy pair (t_1, -1) and climbs "
                "to the largest timestep": _inversion_variant(z_0, epsilon_at, schedule, timesteps, order="sampling"),
                "eps_hat is evaluated at t_prev; plain DDIM inversion evaluates it at the target t (at z_{t_prev})":
                    _inversion_variant(z_0, epsilon_at, schedule, timesteps, noise_at="t_prev"),
                f"the loop stops one step short: {num_steps} steps lead from z_0 to z_T":
                    _inversion_variant(z_0, epsilon_at, schedule, timesteps, steps=num_steps - 1),
                "that is z_0 itself: apply ddim_inversion_step once per pair (t, t_prev)": z_0,
            }
            z_T = _as_tensor(name, _call(name, student, z_0, epsilon_at, schedule, timesteps), z_0).to(z_0)
            _compare(name, z_T, expected, mistakes, atol=1e-3)
            psnrs = {}
            for label, latents in (("yours", z_T), ("library", expected)):
                z_back = sample(denoiser, latents, schedule, timesteps, progress=False).sample
                psnrs[label] = float(psnr(decode_latents(pipe, z_back)[0], reference_image))
        if not psnrs["yours"] >= psnrs["library"] - margin_db:
            raise ExerciseFailed(f"{name}: inverting with your loop and sampling back gives {psnrs['yours']:.1f} dB, "
                                 f"the library's DDIM inversion {psnrs['library']:.1f} dB (allowed: {margin_db} dB less)")
        return f"reconstruction through your inversion: {psnrs['yours']:.1f} dB (library {psnrs['library']:.1f} dB)"

    return _judged_alone(student, EARLIER_EXERCISES[name], run)


# ---------------------------------------------------------------------------------------------------------------
# Lab 4: Prompt-to-Prompt
# ---------------------------------------------------------------------------------------------------------------


@exercise_check
def check_replace_cross_attention(student: Callable, tokenizer) -> bool:
    """student(source_maps (heads, HW, tokens), mapper (targets, tokens, tokens)) -> target maps (targets, heads, HW,
    tokens); reference: attention.controllers.AttentionReplace.replace_cross_attention."""
    from diffusion_lab.attention.controllers import AttentionReplace
    from diffusion_lab.attention.tokens import max_tokens

    name = "replace_cross_attention"
    prompts = ["a large red circle on a gray background", "a large red square on a gray background",
               "a large blue circle on a gray background"]
    controller = AttentionReplace(tokenizer, prompts)
    tokens = max_tokens(tokenizer)
    generator = torch.Generator().manual_seed(5)
    source = torch.softmax(torch.randn(2, 16, tokens, generator=generator), dim=-1)  # (heads, HW, tokens)
    targets = torch.softmax(torch.randn(2, 2, 16, tokens, generator=generator), dim=-1)  # (targets, heads, HW, tokens)
    expected = controller.replace_cross_attention(source, targets)
    mapper = controller.mapper.clone()
    permuted = torch.stack([torch.eye(tokens)[torch.randperm(tokens, generator=generator)] for _ in range(2)])
    result = _call(name, student, source, mapper)
    if isinstance(result, torch.Tensor) and tuple(result.shape) == tuple(source.shape):
        raise ExerciseFailed(f"{name}: one set of maps per target: the result has a leading targets dimension, "
                             f"(targets, heads, HW, tokens) = {tuple(targets.shape)}; yours has the source's shape")
    if isinstance(result, torch.Tensor) and tuple(result.shape) == tuple(targets.shape) and _close(result, targets):
        raise ExerciseFailed(f"{name}: these are the targets' own maps; the word swap gives each target the SOURCE's maps")
    _compare(name, result, expected, {
        "the targets must take the source's maps through the mapper: target[:, :, :, j] = sum_i source[:, :, i] mapper[i, j]":
            source[None].expand_as(targets) * 0 + torch.einsum("hqw,tnw->thqn", source, mapper),
    })
    # a mapper that is not the identity (the check's own): columns must follow it
    expected = torch.einsum("hqw,twn->thqn", source, permuted)
    _compare(name, _call(name, student, source, permuted), expected, {
        "the mapper is ignored: each target column j takes the source's column i where mapper[k, i, j] = 1, so a "
        "permuting mapper moves columns": source[None].expand(2, -1, -1, -1),
        "the mapper is applied transposed: use source @ mapper (source column i goes to every target column j with "
        "mapper[i, j] = 1)": torch.einsum("hqw,tnw->thqn", source, permuted),
    }, what=" (with a permutation as mapper)")
    return _passed("the word swap's maps match AttentionReplace.replace_cross_attention")


@exercise_check
def check_refine_alignment(student: Callable, tokenizer) -> bool:
    """student(source_ids, target_ids) -> list, for each target token, the aligned source position or -1 (a new
    token); reference: the prompt positions of attention.tokens.refinement_alignment (P2P's seq_aligner)."""
    from diffusion_lab.attention.tokens import prompt_token_ids, refinement_alignment

    name = "refine_alignment"
    pairs = [("a red circle on a gray background", "a large red circle on a gray background"),
             ("a circle on a gray background", "a blue circle on a gray background"),
             ("a large red circle", "a large red circle on a white background"),
             ("a red circle on a gray background", "a small red circle on a white background")]
    for source, target in pairs:
        source_ids, target_ids = prompt_token_ids(tokenizer, source), prompt_token_ids(tokenizer, target)
        expected = refinement_alignment(tokenizer, source, target)[0][: len(target_ids)].tolist()
        result = _call(name, student, list(source_ids), list(target_ids))
        try:
            result = [int(v) for v in result]
        except Exception:
            raise ExerciseFailed(f"{name} must return a list of ints, got {result!r}") from None
        if result != expected:
            new_tokens = [k for k, e in enumerate(expected) if e == -1]
            if result == list(range(len(target_ids))):
                raise ExerciseFailed(f"{name}({source!r} -> {target!r}): you matched tokens by position (0, 1, 2, ...); "
                                     "find each target token in the source instead (-1 for a token the source lacks)")
            if new_tokens and len(result) == len(expected) and all(result[k] != -1 for k in new_tokens):
                raise ExerciseFailed(f"{name}({source!r} -> {target!r}): a target token the source lacks gets -1; yours "
                                     "gave every token a source position")
            if any(r == -1 and e >= 0 for r, e in zip(result, expected)):
                raise ExerciseFailed(f"{name}({source!r} -> {target!r}): a token the source has is marked -1: after a "
                                     "new or replaced word, search AHEAD in the source for the next target token")
            tokens = [tokenizer.decode([i]).strip() or "<special>" for i in target_ids]
            wrong = [f"{tok!r}: {r} (expected {e})" for tok, r, e in zip(tokens, result, expected) if r != e]
            length = "" if len(result) == len(expected) else f" it has {len(result)} entries, expected {len(expected)};"
            raise ExerciseFailed(f"{name}({source!r} -> {target!r}):{length} wrong positions: {', '.join(wrong[:4])}. "
                                 "A target token that is new gets -1, every other token the position of the same "
                                 "token in the source (in order)")
    return _passed("the refine alignment matches attention.tokens.refinement_alignment on every prompt pair")


def _word_maps_per_layer(store, word_columns: torch.Tensor) -> list[torch.Tensor]:
    """The inputs of the local-blend exercise: per cross-attention layer, the attention of the chosen words
    (prompts, 1, h, w), read from an AttentionStore as LocalBlend.mask reads it."""
    maps = []
    for name, layer in store.layers.items():
        if layer.is_cross:
            averaged = store.sums[name] / layer.calls  # (prompts, HW, tokens)
            maps.append((averaged * word_columns[:, None, :]).sum(-1).reshape(-1, 1, *layer.size))
    return maps


def _local_blend_variants(word_maps, latent_size, threshold: float, dilation: int) -> dict[str, torch.Tensor]:
    """Exercise 4.3's plausible mistakes, each as the mask it gives (message -> (prompts, 1, H, W) booleans)."""
    import torch.nn.functional as F

    def blend(normalise=True, kernel=None, mode="bilinear"):
        maps = [F.interpolate(m, size=latent_size, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
                for m in word_maps]
        averaged = torch.stack(maps).mean(0)
        if normalise:
            averaged = averaged / averaged.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        above = (averaged > threshold).float()
        size = 2 * dilation + 1 if kernel is None else kernel
        return (F.max_pool2d(above, size, stride=1, padding=size // 2) if size > 1 else above) > 0

    variants = {
        "each prompt's averaged map must be divided by its maximum before the threshold (the threshold is a "
        "fraction of the strongest attention)": blend(normalise=False),
        "the dilation is not applied: max-pool the mask with kernel 2 * dilation + 1, stride 1, padding dilation":
            blend(kernel=1),
        "upsample with mode='bilinear' (align_corners=False), not 'nearest'": blend(mode="nearest"),
    }
    return variants


@exercise_check
def check_local_blend_mask(student: Callable, pipe, num_steps: int = 10) -> bool:
    """student(word_maps [per layer (prompts, 1, h, w)], latent_size (H, W), threshold, dilation) -> boolean masks
    (prompts, 1, H, W); reference: attention.controllers.LocalBlend.mask on the maps of a real word swap."""
    from diffusion_lab.attention.controllers import LocalBlend
    from diffusion_lab.editing import PromptEdit, run_edit

    name = "local_blend_mask"
    prompts = ["a large red circle on a gray background", "a large red square on a gray background"]
    result = run_edit(pipe, PromptEdit.from_dict({"source_prompt": prompts[0], "target_prompts": prompts[1:],
                                                  "edit": "replace"}), seed=0, num_steps=num_steps, progress=False)
    store = result.controller
    latent_size = tuple(result.latents.shape[-2:])
    for threshold, dilation in ((0.3, 1), (0.5, 0), (0.2, 2)):
        blend = LocalBlend(pipe.tokenizer, prompts, (("circle",), ("square",)), threshold=threshold, dilation=dilation,
                           mask_style="ours")  # the exercise's mask: ours (bilinear, every layer, dilated)
        expected = blend.mask(store, latent_size)
        word_maps = _word_maps_per_layer(store, blend.word_columns)
        mask = _call(name, student, [m.clone() for m in word_maps], latent_size, threshold, dilation)
        mask = _as_tensor(name, mask, expected).bool()
        if not torch.equal(mask, expected):
            for message, variant in _local_blend_variants(word_maps, latent_size, threshold, dilation).items():
                if torch.equal(mask, variant) and not torch.equal(variant, expected):
                    raise ExerciseFailed(f"{name}(threshold={threshold}, dilation={dilation}): {message}")
            differ = float((mask != expected).float().mean())
            inside, wanted = float(mask.float().mean()), float(expected.float().mean())
            hint = ("too large: upsample each layer's map to the latent size, average, divide by the maximum, then "
                    "threshold" if inside > wanted else "too small: did you dilate (max-pool with kernel 2 * dilation + 1)?")
            raise ExerciseFailed(f"{name}(threshold={threshold}, dilation={dilation}): {differ:.0%} of the pixels differ "
                                 f"from LocalBlend.mask; your mask covers {inside:.0%}, the reference {wanted:.0%} "
                                 f"({hint})")
    return _passed("the local-blend mask matches LocalBlend.mask at three thresholds and dilations")


# ---------------------------------------------------------------------------------------------------------------
# Which exercise uses which earlier one
# ---------------------------------------------------------------------------------------------------------------


def _reference_forward_marginal_sample(x_0, alpha_bar_t, noise):
    """Exercise 1.1 with its signature: posterior.forward_marginal_sample."""
    from diffusion_lab.posterior import forward_marginal_sample

    return forward_marginal_sample(x_0, alpha_bar_t, noise=noise)


def _reference_ddim_inversion_step(z_prev, epsilon, alpha_bar_prev, alpha_bar_t):
    """Exercise 3.1 with its signature: inversion.ddim_inversion_step."""
    from diffusion_lab.inversion import ddim_inversion_step

    return ddim_inversion_step(z_prev, epsilon, alpha_bar_prev, alpha_bar_t)


def _reference_strength_timesteps(timesteps, strength):
    """Exercise 1.2 with its signature (the timesteps, not the schedule): naive_noising.timesteps_left_after_noising."""
    from diffusion_lab.naive_noising import timesteps_left_after_noising

    return timesteps_left_after_noising(torch.as_tensor(timesteps), strength)


# exercise function -> {earlier exercise's function it may call: Earlier}; tests/test_course_chained.py checks that
# every call from a solution in labs/src to an earlier exercise's function is listed here
EARLIER_EXERCISES: dict[str, dict[str, Earlier]] = {
    "noise_to_strength": {
        "forward_marginal_sample": Earlier("exercise 1.1", check_forward_marginal_sample,
                                           _reference_forward_marginal_sample),
        "strength_timesteps": Earlier("exercise 1.2", check_strength_timesteps, _reference_strength_timesteps),
    },
    "ddim_invert": {
        "ddim_inversion_step": Earlier("exercise 3.1", check_ddim_inversion_step, _reference_ddim_inversion_step),
    },
}

# checks whose subject is an earlier exercise's function (they say "fix it first" when that exercise fails): none
# since exercise 3.2 has code of its own (the inversion loop), judged with the reference step in place of a wrong one
CHECKS_OF_EARLIER_EXERCISES: dict[str, str] = {}

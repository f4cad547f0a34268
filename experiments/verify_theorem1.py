"""Check Theorem 1's identities T1–T5 (SPEC §3) on random or given weights and prompts.

    python experiments/verify_theorem1.py               # defaults: d_in 20, N 40, 256 prompts, L = 1…16
    python experiments/verify_theorem1.py --quick       # depths 1, 2, 4 only
    python experiments/verify_theorem1.py --params W.npz --prompts H.npz --dump traj.npz

Per depth ``L``, check and dtype the table gives the max and median over prompts of each prompt's
worst layer ``t ≤ L``, the non-finite prompts (never a pass) and PASS/FAIL against the tolerance
(:mod:`lintrans.verify`). Two blocks: the main block (weights at a scale where every state stays
finite; it sets the exit status) and the overflow block (the same draw rescaled to
``--overflow-init-scale``, default std ``1/√D``; informational).

Defaults and why: the default weight scale keeps every state finite to L = 16
(:func:`lintrans.verify.default_init_scale`: ``‖ΔW_t‖_F ≈ s·N·c³·√D`` held near 0.03, so
``c = 0.05·(40/N)^(1/3)`` for s = 1 and 0.1 for s = 1/N). Measured (defaults, seed 0, 256 prompts):
median ``‖ΔW_t‖_F`` 0.025–0.036 in every layer, max |h| stays 4.36 — the inputs' own max — to
L = 16. At c = 1 max |h| is 360 after layer 1, 2e8 after layer 2, 1e78 after layer 4, and every
prompt overflows in layer 6 (float64) / layer 4 (float32): ΔW_t is cubic in the weights and
quadratic in the states. The L-layer model is the first L layers of one deep draw (or of the
--params file); float32 casts the same float64 numbers. float64 (tol 1e-12) sets the exit status,
float32 (tol 1e-5 ≈ 84 ulps) is reported; with --dtype float32 alone, float32 decides.

Writes ``results/verify_theorem1.json`` and ``results/figures/theorem1_identity.png`` (``_quick``
with --quick); ``--per-prompt`` adds the per-prompt arrays (``.npz`` beside the JSON), ``--dump``
the trajectory of the deepest L. Exit status: 0 every decisive check passes; 1 an identity fails or
a main-block prompt goes non-finite; 2 bad input.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from lintrans import cli, verify
from lintrans.attention import MASKS, SCALES
from lintrans.cli import option
from lintrans.io import save_npz
from lintrans.plots.theorem1 import identity_figure

NAME = "verify_theorem1"
D_IN, N_DEMOS, BATCH = 20, 40, 256  # the default sizes (Garg et al.'s d = 20; N = 2d > D, so rank bound D)


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes, options and inputs of one Theorem 1 check."""

    d_in: int | None = option(None, f"input dimension d_in (none: {D_IN}, or D − d_out of --params/--prompts)", low=1)
    d_out: int = option(1, "label dimension (1: regression); D = d_in + d_out", low=1)
    n_demos: int | None = option(None, f"N demonstrations per prompt (none: {N_DEMOS}); the --prompts file sets it", low=1)
    layers: tuple[int, ...] | None = option(
        None, f"depths L, each the first L layers of one deep draw (none: {','.join(map(str, verify.STANDARD_DEPTHS))}; "
        "with --params those up to its depth and its depth)", low=1)
    batch: int | None = option(None, f"prompts B per depth, one vmapped call (none: {BATCH}); --prompts sets it", low=1)
    mask: str = option("demos", "attention mask: demos (the paper's; T1–T5) or causal (T3/T4 do not apply)", choices=MASKS)
    scale: str = option("1", "attention scale s: 1 (the paper's) or 1/N", choices=SCALES)
    readout: int = option(1, "readout sign ρ of the prediction (recorded; does not enter T1–T5)", choices=(1, -1))
    dtype: str = option("both", "float64 (sets the exit status), float32, or both", choices=("float64", "float32", "both"))
    seed: int = option(0, "PRNG seed: split once into a weight key and a prompt key", low=0)
    task: str = option("random", "prompts: random (N(0,1) tokens) or linear (noiseless regression)", choices=verify.TASKS)
    init_scale: float | None = option(None, "weight std init_scale/√D (none: 0.05·(40/N)^(1/3) for s=1, 0.1 for s=1/N)",
                                      low=0.0)
    overflow_init_scale: float = option(1.0, "scale of the informational overflow block (1 = std 1/√D; 0 skips it)",
                                        low=0.0)
    tol_float64: float = option(1e-12, "float64 tolerance (SPEC §3; measured ~1e-15)", low=0.0)
    tol_float32: float = option(1e-5, "float32 tolerance (≈ 84 ulps; measured max 5.7e-7 at the defaults)", low=0.0)
    params: str | None = option(None, "weights npz: w_k, w_q, w_v (L, D, D), float32/64; depths are prefixes",
                                kind="input_file", metavar="FILE.npz")
    prompts: str | None = option(None, "prompts npz: H (B, D, N+1), query last, query label slot 0; sets B, N, D",
                                 kind="input_file", metavar="FILE.npz")
    dump: str | None = option(None, "write delta_w, G, W (B, L, D, D) and states (B, L+1, D, N+1) of the deepest L "
                              "(float64 under --dtype both)", kind="output_file", metavar="FILE.npz")
    per_prompt: bool = option(False, "also save the per-prompt, per-layer errors and predictions (.npz beside the JSON)")

    def check(self, given: frozenset[str]) -> None:
        if self.params is not None and self.init_scale is not None:
            raise ValueError("--init-scale has no meaning with --params (the weights come from the file)")
        if self.prompts is not None:
            for name in ("n_demos", "batch"):
                if getattr(self, name) is not None:
                    raise ValueError(f"--{name.replace('_', '-')} has no meaning with --prompts (the file sets B, D and N)")
            if "task" in given:
                raise ValueError("--task has no meaning with --prompts")
        if self.dump is not None:
            cli.check_output_file(self.dump, "--dump")

    def dtypes(self) -> tuple[str, ...]:
        return ("float64", "float32") if self.dtype == "both" else (self.dtype,)


QUICK = dict(layers=(1, 2, 4))  # 12 jitted calls instead of 24; touches nothing a file sets


def _inputs(config: Config):
    """Load or draw the deepest float64 weights and the prompts; the config with every size filled in."""
    key_params, key_prompts = jax.random.split(jax.random.PRNGKey(config.seed))
    params = verify.load_params_file(config.params, config.d_out) if config.params else None
    H = verify.load_prompts_file(config.prompts, config.d_out) if config.prompts else None
    dims = {}  # file → the D it fixes
    if params is not None:
        dims[config.params] = params.dim
    if H is not None:
        dims[config.prompts] = H.shape[1]
    if len(set(dims.values())) > 1:
        raise ValueError("D mismatch: " + ", ".join(f"{f} has D = {D}" for f, D in dims.items()))
    if config.d_in is not None:
        for f, D in dims.items():
            if D != config.d_in + config.d_out:
                raise ValueError(f"--d-in {config.d_in} with d_out {config.d_out} gives D = {config.d_in + config.d_out}, "
                                 f"but {f} has D = {D}")
    d_in = next(iter(dims.values())) - config.d_out if dims else (config.d_in or D_IN)
    layers = tuple(sorted(set(config.layers or verify.default_depths(params.n_layers if params else None))))
    if params is not None and max(layers) > params.n_layers:
        raise ValueError(f"--layers (or --quick) asks for depth {max(layers)} but {config.params} holds "
                         f"{params.n_layers} layers")
    n_demos = H.shape[2] - 1 if H is not None else (config.n_demos or N_DEMOS)
    batch = H.shape[0] if H is not None else (config.batch or BATCH)
    D, L = d_in + config.d_out, max(layers)
    # vmapped trajectory: states (B, L+1, D, N+1) and delta_w, G, W (B, L, D, D), float64, plus the checks' copies
    cli.check_size(batch * (L + 1) * D * (n_demos + 1) + 3 * batch * L * D * D,
                   f"trajectories of --batch {batch} prompts, depth {L}, D = {D}, --n-demos {n_demos}", itemsize=8, copies=3)
    if H is None:
        H = verify.draw_prompts(key_prompts, config.task, batch, n_demos, d_in, config.d_out)
    if params is None:
        params = verify.draw_params(key_params, L, D)
    return dataclasses.replace(config, d_in=d_in, n_demos=n_demos, batch=batch, layers=layers), params, H


def run(config: Config, *, quiet: bool = False) -> dict:
    """Main block (and overflow block): every number, JSON-ready; ``arrays`` with --per-prompt."""
    config.check(frozenset())
    jax.config.update("jax_enable_x64", True)  # float64 must be float64
    config, params, H = _inputs(config)
    from_file = config.params is not None
    init_scale = None if from_file else (config.init_scale if config.init_scale is not None
                                         else verify.default_init_scale(config.scale, config.n_demos))
    blocks = [("main", params if from_file else verify.scaled(params, init_scale), init_scale)]
    if not from_file and config.overflow_init_scale > 0:
        blocks.append(("overflow", verify.scaled(params, config.overflow_init_scale), config.overflow_init_scale))
    progress = cli.Progress(len(blocks) * len(config.layers) * len(config.dtypes()), NAME, quiet=quiet, unit="calls")
    out, arrays = {}, {}
    for name, p, scale in blocks:
        out[name], arr = verify.run_block(
            name, p, H, layers=config.layers, dtypes=config.dtypes(), mask=config.mask, scale=config.scale,
            readout=config.readout, init_scale=scale, update=lambda info: progress.update(info=info),
            tols={"float64": config.tol_float64, "float32": config.tol_float32})
        arrays.update(arr)
    results = {
        "config": dataclasses.asdict(config),
        "init_scale": init_scale,
        "weights": f"file {config.params}" if from_file else "random, first L layers of one draw",
        "prompts": f"file {config.prompts}" if config.prompts else
                   f"{'random_prompts' if config.task == 'random' else 'sample_linear'} (seed {config.seed})",
        "main": out["main"],
        "overflow": out.get("overflow"),
        "overflow_skipped": None if "overflow" in out else ("--params given (the overflow block uses random weights)"
                                                            if from_file else "overflow_init_scale = 0"),
        **verify.verdict(out["main"], config.dtypes()),
    }
    if config.dump is not None:
        dtype = "float64" if config.dtype == "both" else config.dtype
        L = max(config.layers)
        save_npz(config.dump, verify.dump_trajectory(blocks[0][1], H, L=L, dtype=dtype, mask=config.mask,
                                                     scale=config.scale))
        results["dump_info"] = {"path": config.dump, "dtype": dtype, "L": L}
        print(f"wrote: {config.dump}")
    text = verify.report(results)
    print(text if not quiet else text.splitlines()[-1])
    if config.per_prompt:
        results["arrays"] = {k: np.asarray(v) for k, v in arrays.items()}
    return results


def plot(results: dict) -> dict:
    try:
        return {"theorem1_identity": identity_figure(results)}
    except (KeyError, TypeError, StopIteration) as e:
        raise ValueError(f"not a {NAME} results file ({type(e).__name__}: {e})") from None


def main(argv: list[str] | None = None) -> int:
    status = {}

    def run_and_keep_status(config, *, quiet=False):
        results = run(config, quiet=quiet)
        status["exit"] = results["exit_status"]
        return results

    code = cli.main(Config, run_and_keep_status, plot, argv, name=NAME, doc=__doc__, presets={"quick": QUICK})
    return status.get("exit", code)


if __name__ == "__main__":
    cli.command(main)

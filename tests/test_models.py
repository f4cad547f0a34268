"""The model registry (lintrans.models): every registered model honours the interface the training
code, the checkpoints and the experiments rely on; a new model is one entry away from training.

float64 (tests/conftest.py); identities at rtol 1e-12.
"""

import ast
import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans import models, train_config, trained
from lintrans.numerics import rel_err
from lintrans.tasks import sample_linear
from lintrans.train import TrainConfig, batch_loss, init_model, predict_positions, predict_query, sample_batch, train

LIB = Path(__file__).resolve().parent.parent / "lintrans"
#: One tiny config per registered model (the same sizes as tests/test_train.py's TINY / SOFTMAX).
TINY = {"linear": dict(model="linear", d_in=3, n_demos=6, n_layers=2, init_std=0.3),
        "softmax": dict(model="softmax", d_in=3, n_demos=6, n_layers=2, width=8, n_heads=2, mlp_width=16)}
COMMON = dict(batch_size=8, steps=30, warmup_steps=5, dtype="float64", checkpoint_every=10, log_every=5)


def test_registry_names_and_lookup():
    assert models.MODELS == tuple(models.REGISTRY) and models.MODELS[:2] == ("linear", "softmax")
    assert train_config.MODELS is models.MODELS, "TrainConfig's model names come from the registry"
    assert trained.MODEL_GROUPS == {name: m.groups for name, m in models.REGISTRY.items()}
    assert trained.MODEL_GROUPS["linear"] == ("attn",) and trained.MODEL_GROUPS["softmax"] == ("attn", "mlp")
    assert models.get("linear").theorem1 and not models.get("softmax").theorem1
    assert models.get("linear").layout == "spec" and models.get("softmax").layout == "interleaved"
    with pytest.raises(ValueError, match=r"model must be one of \('linear', 'softmax'.*\), got 'mlp'"):
        models.get("mlp")
    with pytest.raises(ValueError, match="model must be one of"):
        TrainConfig(model="mlp")


def test_training_code_never_compares_model_names():
    """Decisions about a model go through its registry entry, not ``model == "…"`` (issue 10)."""
    pattern = re.compile(r"""\.model\s*(==|!=)\s*["']""")
    hits = [f"{name}:{i}" for name in TRAINING_MODULES
            for i, line in enumerate((LIB / name).read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == [], f"model-name comparisons in the library: {hits}"


@pytest.mark.slow
@pytest.mark.parametrize("name", models.MODELS)
def test_every_model_honours_the_interface(name, tmp_path):
    spec = models.get(name)
    cfg = TrainConfig(**TINY.get(name, {**TINY["softmax"], "model": name}), **COMMON)
    # Jitted (eagerly, every primitive of the init compiles on its own); traced twice, each call its own
    # jax.jit, so Python-side state in the init (a global RNG, a counter) would show as well.
    params = jax.jit(lambda k: init_model(k, cfg))(jax.random.PRNGKey(0))
    assert isinstance(params, spec.params_type)
    # init is a pure function of the key: same key, bitwise the same parameters.
    again = jax.jit(lambda k: init_model(k, cfg))(jax.random.PRNGKey(0))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg="init: same key, same parameters")
    batch = jax.jit(lambda k: sample_batch(cfg, k, 1))(jax.random.PRNGKey(1))
    loss = float(jax.jit(lambda p: batch_loss(cfg, p, batch))(params))
    assert np.isfinite(loss) and loss > 0
    # predict_query (batched, jitted) is the entry's one-prompt function vmapped.
    H = jax.jit(lambda k: sample_linear(k, 4, 6, 3, dtype=jnp.float64).H)(jax.random.PRNGKey(2))
    got = predict_query(cfg, params, H)
    one_prompt = jax.jit(lambda p, h: spec.predict_query(cfg, p, h))  # compiled once for the loop over prompts
    want = np.stack([np.asarray(one_prompt(params, h)) for h in np.asarray(H)])
    assert got.shape == (4,) and float(rel_err(got, want)) <= 1e-12, "predict_query vs the entry, rtol 1e-12"
    if spec.predict_positions is not None:
        pos = predict_positions(cfg, params, H)
        assert pos.shape == (4, 7)
        assert float(rel_err(pos[:, -1], got)) <= 1e-12, "last position is the query's prediction, rtol 1e-12"
    else:
        with pytest.raises(ValueError, match="predicts the query only"):
            predict_positions(cfg, params, H)
    # One seed's parameters round-trip through the entry's files, bitwise; float16 is refused.
    path = tmp_path / "p.npz"
    spec.save_params(path, params)
    back = spec.load_params(path, cfg)
    assert type(back) is type(params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg="save/load round trip")
    with np.load(path) as z:
        half = {k: z[k].astype(np.float16) for k in z.files}
    np.savez(tmp_path / "half.npz", **half)
    with pytest.raises(TypeError, match=r"half.npz: array '\w+' is float16"):
        spec.load_params(tmp_path / "half.npz", cfg)
    wrong = dataclasses.replace(cfg, n_layers=3)
    with pytest.raises(ValueError, match="p.npz"):
        spec.load_params(path, wrong)


@pytest.mark.slow
def test_a_new_registry_entry_trains_with_the_existing_loop(monkeypatch):
    """A model added as one entry (here: linear attention with the readout sign flipped in its own
    functions) trains, checkpoints and predicts through the unchanged training code."""
    base = models.get("linear")

    def predict(config, params, H):
        return -base.predict_query(config, params, H)

    def loss(config, params, batch, path):
        y_hat = jax.vmap(lambda h: predict(config, params, h))(batch.H)
        return jnp.mean((y_hat - batch.targets) ** 2) / batch.d_active

    toy = dataclasses.replace(base, name="toy_flipped", reads_gram=False, loss=loss, predict_query=predict)
    monkeypatch.setitem(models.REGISTRY, "toy_flipped", toy)
    cfg = TrainConfig(model="toy_flipped", d_in=2, n_demos=3, n_layers=1, batch_size=4, steps=3, warmup_steps=0,
                      dtype="float64", checkpoint_every=3, log_every=3)
    result = train(cfg, quiet=True)
    params = jax.tree_util.tree_map(lambda x: x[0], result.state.params)
    H = jax.jit(lambda k: sample_linear(k, 2, 3, 2, dtype=jnp.float64).H)(jax.random.PRNGKey(3))
    flipped = predict_query(cfg, params, H)
    plain = predict_query(dataclasses.replace(cfg, model="linear"), params, H)
    np.testing.assert_array_equal(np.asarray(flipped), -np.asarray(plain), err_msg="the entry's own prediction is used")
    with pytest.raises(ValueError, match="sampler='wishart' needs"):
        TrainConfig(model="toy_flipped", sampler="wishart")


#: Library modules of training that must import in one direction (issue 10): no import circle,
#: nothing from the scripts' harness, no imports hidden inside functions.
TRAINING_MODULES = ("train.py", "train_config.py", "train_state.py", "checkpoint.py", "trained.py", "progress.py",
                    "lock.py", "limits.py", "models/__init__.py", "models/base.py", "models/linear.py",
                    "models/softmax.py")


def _imports(path: Path) -> tuple[set[str], list[str]]:
    tree = ast.parse(path.read_text())
    names, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            mods = {a.name for a in node.names}
        else:
            continue
        names |= mods
        if node.col_offset > 0:
            nested.append(f"{path.name}:{node.lineno}")
    return names, nested


def test_training_modules_import_in_one_direction():
    order = ["train_config", "train_state", "checkpoint", "train", "trained"]
    for name in TRAINING_MODULES:
        imports, nested = _imports(LIB / name)
        assert not {m for m in imports if m.startswith(("lintrans.experiment", "lintrans.cli"))}, \
            f"{name} imports the scripts' harness"
        if name in ("train.py", "train_config.py", "train_state.py", "checkpoint.py", "trained.py"):
            assert nested == [], f"imports inside functions: {nested}"
        me = name[:-3]
        if me in order:
            later = {f"lintrans.{m}" for m in order[order.index(me) + 1:]}
            assert not imports & later, f"{name} imports a module above it: {sorted(imports & later)}"

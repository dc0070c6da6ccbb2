"""Structured pruning: masks emulate compaction exactly, importance finds planted structure,
widths reach the asked ratio, schedules behave, bad input is named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdistill.models import (ModelConfig, abstract_params, as_module, decay_mask, forward, init_params,
                               load_pretrained, logical_axes, make_mesh, save_pretrained, shard_params,
                               structure)
from jaxdistill.models.lora import MODULES, init_lora
from jaxdistill.pruning import (IMPORTANCE_METHODS, PruningError, PruningSchedule, Widths, apply_masks,
                                compact, compression_ratio, full_masks, importance, masked_forward,
                                param_count, prune_to, widths_for_ratio)
from tests.tiny_models import VOCAB, hf_logits, random_sequences


def _batches(vocab, n=2, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, vocab, (3, 12)).astype(np.int32)
        segments = np.ones_like(tokens)
        segments[0, 9:] = 0  # some padding
        out.append({"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(segments)})
    return out


GRANULARITY_WIDTHS = {
    "heads_query": dict(heads=2),             # one query head per kv group
    "heads_groups": dict(kv_heads=1, heads=2),  # one whole kv group
    "mlp": dict(mlp=40),
    "hidden": dict(hidden=24),
    "layers": dict(layers=2),
    "all": dict(kv_heads=1, heads=1, mlp=40, hidden=24, layers=2),
}


@pytest.mark.parametrize("family, granularity",
                         [(f, g) for f in ("llama3", "qwen3") for g in GRANULARITY_WIDTHS]
                         + [("qwen2", "all"), ("mistral", "mlp"), ("llama_tied", "heads_groups")])
def test_masked_equals_compacted_and_transformers(family, granularity, checkpoints, tmp_path):
    """Llama 3 and Qwen3 (GQA) per granularity and combined; Qwen2 (q/k/v bias, tied), Mistral
    (one kv group, sliding window) and Llama MHA with attention bias, tied, once each."""
    config, params = load_pretrained(checkpoints[family])
    imp = importance(config, params, _batches(VOCAB), method="activation")
    widths = dict(GRANULARITY_WIDTHS[granularity])
    if family == "mistral":
        widths.pop("kv_heads", None)
    if family == "llama_tied":  # multi-head attention: 4 groups of one head
        widths = dict(kv_heads=2, heads=2)
    masks, kept = prune_to(config, imp, Widths.of(config, **widths))
    small_config, small = compact(config, params, masks)
    assert small_config == kept.config(config)
    seqs = random_sequences([12, 7])
    tokens = np.zeros((2, 12), np.int32)
    tokens[0], tokens[1, :7] = seqs[0], seqs[1]
    segments = (np.arange(12)[None] < np.array([[12], [7]])).astype(np.int32)
    masked = np.asarray(masked_forward(config, params, masks, jnp.asarray(tokens),
                                       segment_ids=jnp.asarray(segments)))
    compacted = np.asarray(forward(small_config, small, jnp.asarray(tokens), segment_ids=jnp.asarray(segments)))
    valid = segments.astype(bool)
    assert np.abs(masked - compacted)[valid].max() <= 1e-4
    assert np.abs(masked - np.asarray(forward(config, params, jnp.asarray(tokens))))[valid].max() > 1e-3
    save_pretrained(small_config, small, tmp_path / "pruned")
    reference = hf_logits(tmp_path / "pruned", seqs)
    assert np.abs(reference[0] - masked[0]).max() <= 1e-4
    assert np.abs(reference[1] - masked[1, :7]).max() <= 1e-4


def test_hidden_pruning_needs_the_masked_norm(checkpoints):
    """Zeroing hidden channels alone does not emulate compaction: RMSNorm must average over the
    surviving channels (masked_forward passes hidden_mask for that)."""
    config, params = load_pretrained(checkpoints["qwen3"])
    imp = importance(config, params, method="magnitude")
    masks, _ = prune_to(config, imp, Widths.of(config, hidden=16))
    small_config, small = compact(config, params, masks)
    tokens = jnp.asarray(random_sequences([10])[0][None])
    plain_zeroing = forward(config, apply_masks(config, params, masks), tokens)
    assert float(jnp.abs(plain_zeroing - forward(small_config, small, tokens)).max()) > 1e-2


def _count_leaves(params):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("overrides", [
    dict(), dict(tie_word_embeddings=True), dict(qkv_bias=True),
    dict(qkv_bias=True, o_bias=True, tie_word_embeddings=True), dict(model_type="qwen3", qk_norm=True),
    dict(model_type="qwen3", qk_norm=True, qkv_bias=True, o_bias=True, tie_word_embeddings=True)])
def test_param_count_is_analytic(overrides):
    """param_count (from the structural table, no model built) = the elements init_params allocates,
    tied and untied, with and without q/k/v and o biases and q/k norms."""
    base = dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=96, num_layers=3,
                num_heads=8, num_kv_heads=2, head_dim=16)
    config = ModelConfig(**{**base, **overrides})
    counts = param_count(config)
    assert counts["total"] == _count_leaves(init_params(config, jax.random.key(0)))
    emb = 100 * 64 * (1 if config.tie_word_embeddings else 2)
    assert counts["embedding"] == emb and counts["non_embedding"] == counts["total"] - emb


# --------------------------------------------------------------- the structural table

FAMILY_CONFIGS = {  # every leaf kind each family can have (see models/config.py's table)
    "llama": dict(model_type="llama", qkv_bias=True, o_bias=True),
    "mistral": dict(model_type="mistral", sliding_window=4),
    "qwen2": dict(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", qk_norm=True, qkv_bias=True, o_bias=True),
}


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
def test_structure_table_covers_every_leaf(family):
    """Every logical axis of every leaf is in the table; a kernel's input dims from its axes are
    the ones its module contracts; LoRA's modules are exactly the per-layer projections."""
    config = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, **FAMILY_CONFIGS[family])
    leaves = jax.tree_util.tree_flatten_with_path(logical_axes(config), is_leaf=lambda x: isinstance(x, tuple))[0]
    shapes = jax.tree.leaves(abstract_params(config))
    assert len(leaves) == len(shapes) == len(structure.leaf_axes(config))
    for (key_path, axes), shape in zip(leaves, shapes):
        path = tuple(k.key for k in key_path)
        assert structure.leaf_axes(config)[path] == axes
        assert tuple(structure.axis_size(config, name) for name in axes) == shape.shape, path
    module = as_module(config, abstract_params(config))
    for name, path in structure.projections(config).items():
        projection = getattr(getattr(module.layers, path[1]), name)
        assert structure.input_dims(structure.leaf_axes(config)[path]) == projection.n_in, name
    assert sorted(structure.projections(config)) == sorted(MODULES)


def test_unknown_logical_axis_is_named(monkeypatch):
    with pytest.raises(ValueError, match="logical axis 'experts' is not in the structure table; known axes: embed"):
        structure.axis("experts")
    monkeypatch.setattr(structure, "logical_axes", lambda config: {"moe": {"kernel": ("layers", "experts")}})
    odd = ModelConfig(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=4, rms_norm_eps=0.123)  # not cached yet
    with pytest.raises(ValueError, match="parameter moe.kernel has logical axis 'experts'"):
        param_count(odd)


def test_decay_mask_matrices_only():
    config = ModelConfig(model_type="qwen3", vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True, qkv_bias=True, o_bias=True)
    mask = decay_mask(abstract_params(config))
    layers = mask["layers"]
    decayed = [mask["embed"], mask["lm_head"]["kernel"], *(layers["attn"][p]["kernel"] for p in "qkvo"),
               *(layers["mlp"][p]["kernel"] for p in ("gate", "up", "down"))]
    kept = [mask["final_norm"]["scale"], layers["attn_norm"]["scale"], layers["mlp_norm"]["scale"],
            layers["attn"]["q_norm"]["scale"], layers["attn"]["k_norm"]["scale"],
            *(layers["attn"][p]["bias"] for p in "qkvo")]
    assert all(decayed) and not any(kept) and len(decayed) + len(kept) == len(jax.tree.leaves(mask))
    adapters = init_lora(config, jax.random.key(0), rank=2, modules=("o", "down"))
    assert jax.tree.leaves(decay_mask(adapters)) == [True] * 4
    with pytest.raises(ValueError, match="leaf layers.attn.w.kernel is neither a parameter"):
        decay_mask({"layers": {"attn": {"w": {"kernel": 0}}}})


BIG = ModelConfig(model_type="qwen3", vocab_size=512, hidden_size=256, intermediate_size=768, num_layers=6,
                  num_heads=8, num_kv_heads=2, head_dim=32, qk_norm=True)


@pytest.mark.parametrize("split", ["width", "depth", "mixed"])
@pytest.mark.parametrize("ratio_of", ["total", "non_embedding"])
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_ratio_reached_within_one_rounding_multiple(split, ratio_of, ratio):
    multiple = 32
    widths = widths_for_ratio(BIG, ratio, ratio_of=ratio_of, split=split, multiple=multiple)
    small = widths.config(BIG)
    achieved = compression_ratio(BIG, small)[ratio_of]
    # One rounding step: the ratio change from one more/less multiple of hidden (the coarsest axis),
    # or one layer for depth-only.
    if split == "depth":
        step = compression_ratio(BIG, small.replace(num_layers=small.num_layers - 1))[ratio_of] - achieved
    else:
        step = compression_ratio(BIG, small.replace(hidden_size=small.hidden_size - multiple))[ratio_of] - achieved
    assert abs(achieved - ratio) <= abs(step) + 1e-9, (widths, achieved)
    params = init_params(BIG, jax.random.key(0))
    masks, _ = prune_to(BIG, importance(BIG, params, method="magnitude"), ratio, ratio_of=ratio_of,
                        split=split, multiple=multiple)
    small_config, small_params = compact(BIG, params, masks)
    assert small_config == small
    assert _count_leaves(small_params) == param_count(small)["total"]
    if split == "width":
        assert small.num_layers == BIG.num_layers and small.hidden_size % multiple == 0
    if split == "depth":
        assert (small.hidden_size, small.intermediate_size) == (BIG.hidden_size, BIG.intermediate_size)


# ------------------------------------------------------------------- planted structure

PLANT = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=4,
                    num_heads=4, num_kv_heads=2, head_dim=8)


def _planted_params():
    params = jax.tree.map(lambda x: x * 20.0 if x.ndim > 2 else x, init_params(PLANT, jax.random.key(3)))
    attn, mlp = params["layers"]["attn"], params["layers"]["mlp"]
    # Layer 1, query head 3 (group 1): negligible query and output weights.
    attn["q"]["kernel"] = attn["q"]["kernel"].at[1, :, 3].multiply(1e-4)
    attn["o"]["kernel"] = attn["o"]["kernel"].at[1, 3].multiply(1e-4)
    # Layer 2, neurons 8..15: negligible.
    for name in ("gate", "up"):
        mlp[name]["kernel"] = mlp[name]["kernel"].at[2, :, 8:16].multiply(1e-4)
    mlp["down"]["kernel"] = mlp["down"]["kernel"].at[2, 8:16].multiply(1e-4)
    # Layer 3 is an identity: it writes nothing to the residual stream.
    attn["o"]["kernel"] = attn["o"]["kernel"].at[3].set(0.0)
    mlp["down"]["kernel"] = mlp["down"]["kernel"].at[3].set(0.0)
    return params


@pytest.mark.parametrize("method", ["activation", "magnitude", "taylor"])
def test_planted_structure_ranked_least(method):
    params = _planted_params()
    imp = importance(PLANT, params, _batches(64, seed=1), method=method)
    assert int(jnp.argmin(imp["heads"][1, 1])) == 1  # head 3 = group 1, position 1
    assert set(np.argsort(np.asarray(imp["mlp"][2]))[:8].tolist()) == set(range(8, 16))
    if method == "activation":
        assert int(jnp.argmin(imp["layers"])) == 3 and float(imp["layers"][3]) == pytest.approx(0.0, abs=1e-6)
        masks, _ = prune_to(PLANT, imp, Widths.of(PLANT, layers=3))
        assert np.asarray(masks["layers"]).tolist() == [1.0, 1.0, 1.0, 0.0]


def test_importance_sharded_equals_single_device():
    config = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=8, num_kv_heads=4, head_dim=8, qk_norm=True)
    params = jax.tree.map(lambda x: x * 10.0 if x.ndim > 2 else x, init_params(config, jax.random.key(0)))
    rng = np.random.default_rng(0)
    batches = [{"tokens": jnp.asarray(rng.integers(0, 64, (4, 8)), jnp.int32)} for _ in range(2)]
    mesh = make_mesh((2, 2, 2))
    sharded = shard_params(params, logical_axes(config), mesh)
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
    sharded_batches = [jax.device_put(b, batch_sharding) for b in batches]
    for method in ("activation", "taylor"):
        single = importance(config, params, batches, method=method)
        multi = importance(config, sharded, sharded_batches, method=method)
        for key in single:
            np.testing.assert_allclose(np.asarray(multi[key]), np.asarray(single[key]), rtol=1e-5, atol=1e-6)


def test_iterative_pruning_never_revives():
    params = init_params(BIG, jax.random.key(1))
    batches = _batches(512, seed=2)
    schedule = PruningSchedule(0.5, stages=3, kind="cubic")
    masks = full_masks(BIG)
    previous = jax.tree.map(np.asarray, masks)
    for stage in range(1, 4):
        imp = importance(BIG, params, batches, method="activation", masks=masks)
        masks, _ = prune_to(BIG, imp, schedule.stage_ratio(stage), masks=masks, multiple=32)
        current = jax.tree.map(np.asarray, masks)
        for key in current:
            assert np.all(current[key] <= previous[key]), key
        previous = current
    small_config, _ = compact(BIG, params, masks)
    assert abs(compression_ratio(BIG, small_config)["total"] - 0.5) < 0.05


# ------------------------------------------------------------------------ schedules


@pytest.mark.parametrize("kind", ["linear", "geometric", "cubic"])
def test_schedules_monotone_and_exact(kind):
    schedule = PruningSchedule(0.6, stages=5, kind=kind, interval=100, start=50)
    ratios = [schedule(step) for step in range(0, 700)]
    assert all(b >= a for a, b in zip(ratios, ratios[1:]))
    assert schedule(49) == 0.0 and schedule(50) > 0.0
    assert schedule(schedule.stage_steps()[-1]) == 0.6 and schedule(10**6) == 0.6
    assert [schedule(s) for s in schedule.stage_steps()] == [schedule.stage_ratio(k) for k in range(1, 6)]
    one_shot = PruningSchedule(0.6, stages=1, kind=kind, start=50)
    assert one_shot(50) == 0.6 and one_shot(49) == 0.0


def test_cubic_and_geometric_values():
    assert PruningSchedule(0.8, stages=4, kind="cubic").stage_ratio(2) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert PruningSchedule(0.75, stages=2, kind="geometric").stage_ratio(1) == pytest.approx(0.5)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval(ratio):
    with pytest.raises(PruningError, match=rf"ratio {ratio} is outside the valid range \(0, 1\)"):
        widths_for_ratio(BIG, ratio)
    with pytest.raises(PruningError, match="outside the valid range"):
        PruningSchedule(ratio)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mlp=1000), r"target mlp=1000 is outside the valid range \[1, 768\]"),
    (dict(hidden=512), r"target hidden=512 is outside the valid range \[1, 256\]"),
    (dict(layers=0), r"target layers=0 is outside the valid range \[1, 6\]"),
    (dict(kv_heads=3), r"target kv_heads=3 is outside the valid range \[1, 2\]"),
    (dict(heads=5), "heads=5 breaks GQA grouping: with kv_heads=2 it must be a multiple of 2 between 2 and 8"),
    (dict(kv_heads=1, heads=6), "heads=6 breaks GQA grouping: with kv_heads=1 it must be a multiple of 1 between 1 and 4"),
])
def test_bad_widths(kwargs, message):
    with pytest.raises(PruningError, match=message):
        Widths.of(BIG, **kwargs)


def test_explicit_widths_never_revive():
    params = init_params(BIG, jax.random.key(0))
    imp = importance(BIG, params, method="magnitude")
    masks, _ = prune_to(BIG, imp, Widths.of(BIG, mlp=512, hidden=192))
    with pytest.raises(PruningError, match=r"target mlp=640 is wider than the current masks keep \(512\)"):
        prune_to(BIG, imp, Widths.of(BIG, mlp=640, hidden=192), masks=masks)


def test_llama_widths_stay_exportable():
    llama = ModelConfig(model_type="llama", vocab_size=256, hidden_size=2048, intermediate_size=8192,
                        num_layers=4, num_heads=32, num_kv_heads=8, head_dim=64)
    for ratio in (0.1, 0.3, 0.5, 0.7):
        t = widths_for_ratio(llama, ratio, multiple=64)
        assert t.hidden % t.heads == 0, t
    with pytest.raises(PruningError, match="hidden=1664 is not a multiple of heads=24"):
        Widths.of(llama, hidden=1664, heads=24)


def test_non_uniform_masks_refused_by_compact():
    params = init_params(BIG, jax.random.key(0))
    masks = full_masks(BIG)
    masks["mlp"] = masks["mlp"].at[0, :10].set(0.0)
    with pytest.raises(PruningError, match=r"mlp widths differ across layers \(\[758, 768\]\)"):
        compact(BIG, params, masks)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown importance method 'fisher'; valid: activation, magnitude, taylor"):
        importance(BIG, {}, method="fisher")
    assert IMPORTANCE_METHODS == ("activation", "magnitude", "taylor")

"""The distillation engine: train state, the one-jit step, the loop, checkpoints, metrics.

State (a pytree; everything the step changes):

    step     int32             params   student weights (trained in full mode, frozen for LoRA)
    lora     LoRA adapters ({} unless mode is lora)       opt_state  optax state of what trains
    masks    pruning masks (pruning.full_masks when not pruning)
    rng      uint32 key data   first_bad_step  int32, the first step whose loss or update was not
                               finite (-1: none); checked before every checkpoint, so saved
                               checkpoints are always finite

One jitted step (state donated) runs: the teacher forward (stop-gradient, or cached sparse targets),
the student forward on masked weights (adapters merged), the chunked fused loss, gradients
accumulated over micro-batches in a scan, clipping and the optax update, and re-masking (so pruned
structures stay exactly zero). Modes:

    supervised   cross-entropy on the format's supervised tokens (no teacher)
    logit        full-parameter distillation from a live teacher
    lora         the student frozen (possibly pruned), only adapters train
    cached       distillation from a `TeacherCache` of sparse targets instead of a live teacher
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import losses
from jaxdistill.models import ModelConfig, as_module, hidden_states
from jaxdistill.models.lora import init_lora, merge
from jaxdistill.models.transformer import Params
from jaxdistill.pruning import apply_masks, full_masks

MODES = ("supervised", "logit", "lora", "cached")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible models or data)."""


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static about the step (hashable: part of the compiled program)."""

    student: ModelConfig
    teacher: ModelConfig | None
    mode: str = "logit"
    loss: str = "blended"          # blended | divergence (with `divergence`) ; supervised: ce
    divergence: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 0.1
    w_answer: float = 1.0
    w_trace_ce: float = 1.0
    w_kl: float = 1.0
    kl_schedule: str = "constant"
    kl_warmup_steps: int = 0
    lora_alpha: float = 16.0
    micro_batches: int = 1
    chunk_size: int = 1024
    # optimizer
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    total_steps: int = 100
    decay: str = "cosine"          # cosine | linear | constant
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.95

    def __post_init__(self):
        if self.mode not in MODES:
            raise TrainingError(f"mode={self.mode!r}; valid: {', '.join(MODES)}")
        if self.mode in ("logit", "lora") and self.teacher is None:
            raise TrainingError(f"mode={self.mode!r} needs a teacher model")
        if self.teacher is not None and self.teacher.vocab_size != self.student.vocab_size:
            raise TrainingError(
                f"vocab sizes differ: teacher {self.teacher.vocab_size}, student {self.student.vocab_size} "
                "— teacher and student must share a tokenizer")
        if self.decay not in ("cosine", "linear", "constant"):
            raise TrainingError(f"decay={self.decay!r}; valid: cosine, linear, constant")
        if self.loss not in ("blended", "divergence"):
            raise TrainingError(f"loss={self.loss!r}; valid: blended, divergence")

    def token_loss(self) -> losses.TokenLoss:
        if self.mode == "supervised":
            return losses.cross_entropy_loss()
        if self.mode == "cached" or self.loss == "divergence":
            name = "forward_kl" if self.mode == "cached" else self.divergence
            return losses.divergence_loss(name, temperature=self.temperature, beta=self.beta, alpha=self.alpha)
        return losses.BlendedCoT(w_answer=self.w_answer, w_trace_ce=self.w_trace_ce, w_kl=self.w_kl,
                                 divergence=self.divergence, temperature=self.temperature, beta=self.beta,
                                 alpha=self.alpha, kl_schedule=self.kl_schedule,
                                 kl_warmup_steps=self.kl_warmup_steps).token_loss()


def learning_rate_schedule(c: StepConfig) -> optax.Schedule:
    decay_steps = max(c.total_steps - c.warmup_steps, 1)
    if c.decay == "cosine":
        decay = optax.cosine_decay_schedule(c.learning_rate, decay_steps)
    elif c.decay == "linear":
        decay = optax.linear_schedule(c.learning_rate, 0.0, decay_steps)
    else:
        decay = optax.constant_schedule(c.learning_rate)
    if c.warmup_steps == 0:
        return decay
    # warm-up lr/w, 2 lr/w, ..., lr over steps 0..w-1 (the first step already learns), then decay
    warmup = optax.linear_schedule(c.learning_rate / c.warmup_steps, c.learning_rate, c.warmup_steps - 1)
    return optax.join_schedules([warmup, decay], [c.warmup_steps])


def _decay_mask(tree) -> Any:
    """Weight decay on kernels, embeddings and LoRA matrices; not on norms or biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in ("kernel", "embed", "a", "b"), tree)


def make_optimizer(c: StepConfig, trainable) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(c.clip_norm),
        optax.adamw(learning_rate_schedule(c), b1=c.b1, b2=c.b2, weight_decay=c.weight_decay,
                    mask=_decay_mask(trainable)))


def init_state(c: StepConfig, params: Params, key, *, lora_rank: int = 8,
               lora_targets=("q", "k", "v", "o"), masks=None) -> dict[str, Any]:
    """A fresh train state around the student `params`."""
    lora = init_lora(c.student, jax.random.fold_in(key, 1), rank=lora_rank, targets=lora_targets) \
        if c.mode == "lora" else {}
    trainable = lora if c.mode == "lora" else params
    return {"step": jnp.zeros((), jnp.int32), "params": params, "lora": lora,
            "opt_state": make_optimizer(c, trainable).init(trainable),
            "masks": full_masks(c.student) if masks is None else masks,
            "rng": jax.random.key_data(key), "first_bad_step": jnp.full((), -1, jnp.int32)}


def student_params(c: StepConfig, params: Params, lora: Params, masks) -> Params:
    """The weights the student's forward uses: adapters merged, pruned structures zeroed."""
    if lora:
        params = merge(c.student, params, lora, alpha=c.lora_alpha)
    return apply_masks(c.student, params, masks)


def _per_token(batch) -> dict:
    return {"labels": batch["labels"], "weights": batch["weights"], "parts": batch["parts"]}


def _loss(c: StepConfig, trainable, frozen, masks, teacher, batch, step, coefficients=None):
    params, lora = (frozen, trainable) if c.mode == "lora" else (trainable, {})
    sp = student_params(c, params, lora, masks)
    tokens, segments = batch["tokens"], batch["segment_ids"]
    h = hidden_states(c.student, sp, tokens, segment_ids=segments, hidden_mask=masks["hidden"])
    head = as_module(c.student, sp).head_kernel()
    per_token = _per_token(batch)
    kwargs = {}
    if c.mode in ("logit", "lora"):
        kwargs["teacher_hidden"] = jax.lax.stop_gradient(
            hidden_states(c.teacher, teacher, tokens, segment_ids=segments))
        kwargs["teacher_head"] = jax.lax.stop_gradient(as_module(c.teacher, teacher).head_kernel())
    elif c.mode == "cached":
        kwargs["teacher_targets"] = losses.SparseTargets(batch["target_ids"], batch["target_weights"],
                                                         batch["target_self_term"])
    value, metrics = losses.fused_loss(c.token_loss(), h, head, per_token, step=step,
                                       chunk_size=c.chunk_size, coefficients=coefficients, **kwargs)
    return value, metrics


def state_shardings(c: StepConfig, state, mesh):
    """Shardings of a train state on `mesh`: student weights and their optimizer moments by the
    logical-axis rules, everything else (adapters, masks, counters) replicated."""
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxdistill.models import logical_axes, tree_shardings

    replicated = NamedSharding(mesh, PartitionSpec())
    params = tree_shardings(logical_axes(c.student), state["params"], mesh)
    out = jax.tree.map(lambda _: replicated, state)
    out["params"] = params
    if c.mode != "lora":
        out["opt_state"] = optax.tree_map_params(
            make_optimizer(c, state["params"]), lambda _, sharding: sharding, state["opt_state"], params,
            transform_non_params=lambda _: replicated)
    return out


def place_state(c: StepConfig, state, mesh):
    """The state placed by `state_shardings` (do this once, before the first step)."""
    return jax.device_put(state, state_shardings(c, state, mesh))


def make_train_step(c: StepConfig, shardings=None):
    """The compiled step: (state, teacher_params, batch) -> (state, metrics). `batch` arrays are
    [micro_batches * rows, T]; the state is donated. With `shardings` (from `state_shardings`) the
    new state keeps exactly the input placement, so the step compiles once."""

    def step(state, teacher, batch):
        trainable = state["lora"] if c.mode == "lora" else state["params"]
        tx = make_optimizer(c, trainable)  # built at trace time: part of the compiled step
        # Coefficients from the whole batch, so micro-batch losses and gradients add up exactly to the
        # whole batch's (each mean is over all of the batch's supervised tokens, not per micro-batch).
        token_loss = c.token_loss()
        tok = {**_per_token(batch), "like": jnp.zeros(batch["tokens"].shape, bool)}
        coefs = token_loss.coefficients(tok, state["step"])
        # Micro-batch m takes rows m, m + M, m + 2M, ...: every data shard contributes to every
        # micro-batch, so no shard idles and nothing is gathered.
        split = lambda x: jnp.swapaxes(x.reshape(-1, c.micro_batches, *x.shape[1:]), 0, 1)
        micro = jax.tree.map(split, batch)
        micro_coefs = (jax.tree.map(split, coefs.loss), {m: split(v) for m, (_, v) in coefs.metrics.items()})
        term_of = {m: k for m, (k, _) in coefs.metrics.items()}
        as_coefficients = lambda mc: losses.Coefficients(mc[0], {m: (term_of[m], v) for m, v in mc[1].items()}, {})
        grad_fn = jax.value_and_grad(_loss, argnums=1, has_aux=True)

        def accumulate(carry, xs):
            grads_sum, loss_sum, metrics_sum = carry
            mb, mc = xs
            (value, metrics), grads = grad_fn(c, trainable, state["params"], state["masks"], teacher, mb,
                                              state["step"], as_coefficients(mc))
            return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + value,
                    jax.tree.map(jnp.add, metrics_sum, metrics)), None

        first = jax.tree.map(lambda x: x[0], (micro, micro_coefs))
        metrics_shape = jax.eval_shape(lambda: _loss(c, trainable, state["params"], state["masks"], teacher,
                                                     first[0], state["step"], as_coefficients(first[1]))[1])
        zeros = (jax.tree.map(jnp.zeros_like, trainable), jnp.zeros((), jnp.float32),
                 jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape))
        (grads, loss, metrics), _ = jax.lax.scan(accumulate, zeros, (micro, micro_coefs))
        metrics = {**metrics, **coefs.counts}
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        new = dict(state, opt_state=opt_state, step=state["step"] + 1)
        if c.mode == "lora":
            new["lora"] = trainable
        else:
            new["params"] = apply_masks(c.student, trainable, state["masks"])
        finite_weights = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trainable)]))
        bad = ~jnp.isfinite(loss) | ~finite_weights
        new["first_bad_step"] = jnp.where((state["first_bad_step"] < 0) & bad, state["step"],
                                          state["first_bad_step"])
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": learning_rate_schedule(c)(state["step"])}
        return new, metrics

    return jax.jit(step, donate_argnums=(0,), out_shardings=None if shardings is None else (shardings, None))


def reset_pruned_moments(c: StepConfig, state) -> dict[str, Any]:
    """Zero the pruned structures' weights and their optimizer moments (after a pruning stage)."""
    if c.mode == "lora":  # the frozen weights are zeroed too, so the saved state matches the masks
        return dict(state, params=apply_masks(c.student, state["params"], state["masks"]))
    keep = apply_masks(c.student, jax.tree.map(jnp.ones_like, state["params"]), state["masks"])
    trainable_tx = make_optimizer(c, state["params"])
    opt_state = optax.tree_map_params(trainable_tx, lambda m, k: m * k.astype(m.dtype),
                                      state["opt_state"], keep, transform_non_params=lambda x: x)
    return dict(state, params=apply_masks(c.student, state["params"], state["masks"]), opt_state=opt_state)


def optimizer_state_bytes(state) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(state["opt_state"]) if hasattr(x, "nbytes")))


# ------------------------------------------------------------------------------ checkpoints


class Checkpoints:
    """orbax CheckpointManager around (state, data iterator state, run config); orbax writes each
    step to a temporary directory and renames it when complete, so a kill mid-save leaves the
    previous checkpoint as the latest loadable one."""

    def __init__(self, directory, *, keep: int = 3):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def save(self, step: int, state, data_state: dict, config: dict, *, wait: bool = True) -> None:
        ocp = self.ocp
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config)))
        if wait:
            self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, step: int, abstract_state=None):
        """(state, data iterator state, run config); without `abstract_state`, arrays as saved."""
        ocp = self.ocp
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
        return out["state"], out["data"], out["config"]


# ------------------------------------------------------------------------------ metrics


def step_flops(c: StepConfig, tokens: int, seq_len: int) -> dict[str, float]:
    """Performance-model FLOPs of one step: student forward+backward (x3), teacher forward (x1)."""
    from jaxdistill.bench import forward_flops_per_token

    student = 3 * forward_flops_per_token(c.student, seq_len) * tokens
    teacher = forward_flops_per_token(c.teacher, seq_len) * tokens if c.mode in ("logit", "lora") else 0.0
    return {"student": float(student), "teacher": float(teacher)}


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl (line-buffered, flushed)."""

    def __init__(self, path):
        self.path = Path(path)
        self.file = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, sort_keys=True) + "\n")

    def close(self):
        self.file.close()


def host_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


__all__ = ["Checkpoints", "MODES", "MetricsLog", "StepConfig", "TrainingError", "host_metrics",
           "init_state", "learning_rate_schedule", "make_optimizer", "make_train_step",
           "optimizer_state_bytes", "reset_pruned_moments", "step_flops", "student_params"]


# ------------------------------------------------------------------------------ the loop


def _model_config(fields: dict, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, **fields)


def _data(run: dict, log):
    from jaxdistill.data import Template, encode_dataset, load_source, load_tokenizer, stratified_subsample

    d = run["data"]
    tokenizer = load_tokenizer(d["tokenizer"])
    data = load_source(d["source"], split=d["split"], text_column=d["text_column"],
                       label_column=d["label_column"], rationale_column=d["rationale_column"])
    if d["subsample"]:
        data = data.subset(stratified_subsample(data.labels, min(d["subsample"], len(data)), seed=run["seed"]))
    template = Template(instruction=d["instruction"], use_chat_template=False) if d["instruction"] else Template()
    examples, counts = encode_dataset(data, tokenizer, format=d["format"], template=template, max_len=d["max_len"])
    if not examples:
        raise TrainingError(f"no examples left after encoding: {counts}")
    log(f"data: {len(examples)} examples ({counts}), vocab {len(tokenizer)}")
    return tokenizer, examples, counts


def _iterator(run: dict, examples, seed_offset: int = 0):
    from jaxdistill.data import BatchIterator

    t = run["train"]
    return BatchIterator(examples, batch_size=t["batch_size"], seq_len=t["seq_len"], format=run["data"]["format"],
                         seed=run["seed"] + seed_offset, process_index=jax.process_index(),
                         process_count=jax.process_count())


def _device_batch(batch: dict, mesh) -> dict:
    from jaxdistill.models.sharding import activation_sharding

    arrays = {k: v for k, v in batch.items() if k not in ("example_ids", "positions")}
    return {k: jax.make_array_from_process_local_data(activation_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in arrays.items()}


def _step_config(run: dict, student: ModelConfig, teacher: ModelConfig | None, mode: str, steps: int) -> StepConfig:
    lo, opt = run["loss"], run["optimizer"]
    return StepConfig(student=student, teacher=teacher, mode=mode, loss=lo["kind"], divergence=lo["divergence"],
                      temperature=lo["temperature"], beta=lo["beta"], alpha=lo["alpha"], w_answer=lo["w_answer"],
                      w_trace_ce=lo["w_trace_ce"], w_kl=lo["w_kl"], kl_schedule=lo["kl_schedule"],
                      kl_warmup_steps=lo["kl_warmup_steps"], lora_alpha=run["student"]["lora_alpha"],
                      micro_batches=run["train"]["micro_batches"], chunk_size=lo["chunk_size"],
                      learning_rate=opt["learning_rate"], warmup_steps=opt["warmup_steps"], total_steps=steps,
                      decay=opt["decay"], weight_decay=opt["weight_decay"], clip_norm=opt["clip_norm"])


def train_loop(c: StepConfig, state, teacher, iterator, mesh, run_dir: Path, *, steps: int, run: dict,
               log=print, schedule=None, calibration=None, name: str = "student",
               teacher_cache=None) -> tuple[dict, dict]:
    """Steps `state` to `steps` with checkpoints, pruning stages, metrics; resumes from run_dir."""
    from tqdm import tqdm

    from jaxdistill.bench import peak_flops
    from jaxdistill.pruning import importance, prune_to

    t = run["train"]
    checkpoints = Checkpoints(run_dir / f"checkpoints-{name}", keep=t["keep_checkpoints"])
    shardings = state_shardings(c, state, mesh)
    state = jax.device_put(state, shardings)
    metrics_path = run_dir / f"metrics-{name}.jsonl"
    latest = checkpoints.latest_step()
    if latest is not None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state, data_state, _ = checkpoints.restore(latest, abstract)
        iterator.restore(data_state)
        if metrics_path.exists():  # drop records of steps after the checkpoint (they are redone)
            kept = [line for line in metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= latest]
            metrics_path.write_text("".join(line + "\n" for line in kept))
        log(f"{name}: resumed from step {latest}")
    step_fn = make_train_step(c, shardings)
    live_teacher = teacher if c.mode in ("logit", "lora") else {}
    tokens_per_step = t["batch_size"] * t["seq_len"]
    flops = step_flops(c, tokens_per_step, t["seq_len"])
    peak, peak_source = peak_flops(c.student, tokens_per_step)
    metrics_log = MetricsLog(metrics_path)
    stage_steps = set(schedule.stage_steps()) if schedule else set()
    start = int(jax.device_get(state["step"]))
    stop_at = t["stop_at_step"]
    bar = tqdm(total=steps, initial=start, desc=name, disable=jax.process_index() != 0, mininterval=2.0)
    window_start, window_steps, first_step_s, last = time.perf_counter(), 0, None, {}
    for step in range(start, steps):
        if step in stage_steps:
            stage_start = time.perf_counter()
            masks_before = state["masks"]
            current = student_params(c, state["params"], state["lora"], state["masks"])
            scores = importance(c.student, current, calibration, method=run["pruning"]["method"],
                                masks=state["masks"])
            new_masks, targets = prune_to(c.student, scores, schedule(step), masks=masks_before,
                                          ratio_of=run["pruning"]["ratio_of"], split=run["pruning"]["split"],
                                          multiple=run["pruning"]["multiple"])
            state = jax.device_put(reset_pruned_moments(c, dict(state, masks=new_masks)), shardings)
            log(f"{name}: step {step}: pruned to {dataclasses.asdict(targets)} (target ratio {schedule(step):.3f})")
            window_start += time.perf_counter() - stage_start  # step times exclude the pruning stage
        t0 = time.perf_counter()
        batch = next(iterator)
        if teacher_cache is not None:
            targets = teacher_cache.targets(batch)
            batch.update(target_ids=targets.ids, target_weights=targets.weights, target_self_term=targets.self_term)
        state, metrics = step_fn(state, live_teacher, _device_batch(batch, mesh))
        if first_step_s is None:
            jax.block_until_ready(state["step"])
            first_step_s = time.perf_counter() - t0
            window_start, window_steps = time.perf_counter(), 0
        else:
            window_steps += 1
        done = step + 1
        saving = done % t["checkpoint_every"] == 0 or done == steps
        if done % t["log_every"] == 0 or done == steps or saving:
            bad = int(jax.device_get(state["first_bad_step"]))
            if bad >= 0:
                metrics_log.close()
                raise TrainingError(f"{name}: the loss or the weights became non-finite at step {bad}; stopped. "
                                    f"The last good checkpoint is step {checkpoints.latest_step()} in "
                                    f"{checkpoints.manager.directory}")
        if done % t["log_every"] == 0 or done == steps:
            last = host_metrics(metrics)
            # steady-state time per step over the window (the first, compiling step counts alone)
            step_s = (time.perf_counter() - window_start) / window_steps if window_steps else first_step_s
            record = {"step": done, **last, "step_time_s": step_s, "first_step_s": first_step_s,
                      "step_compilations": step_fn._cache_size(),
                      "tokens_per_s": tokens_per_step / step_s,
                      "mfu_student": flops["student"] / step_s / peak, "mfu_teacher": flops["teacher"] / step_s / peak,
                      "mfu": (flops["student"] + flops["teacher"]) / step_s / peak, "peak_source": peak_source}
            metrics_log.write(record)
            last = record
            bar.set_postfix(loss=f"{last['loss']:.4f}")
            window_start, window_steps = time.perf_counter(), 0
        bar.update(1)
        if saving:
            checkpoints.save(done, state, iterator.state(), run)
        if stop_at is not None and done >= stop_at:
            break
    bar.close()
    metrics_log.close()
    return state, last


def run_distill(run: dict, log=print) -> dict:
    """The `jaxdistill distill` job (see configs/distill_demo.yaml for every key)."""
    from jaxdistill.atomic_files import write_json
    from jaxdistill.models import init_params, load_pretrained, logical_axes, make_mesh, save_pretrained, shard_params
    from jaxdistill.pruning import PruningSchedule, compact, compression_ratio, param_count

    run_dir = Path(run["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(run["mesh"])
    tokenizer, examples, counts = _data(run, log)
    vocab = len(tokenizer)
    key = jax.random.key(run["seed"])

    # Teacher: a local HF checkpoint, or built and trained (supervised) here.
    tcfg = run["teacher"]
    if tcfg["path"]:
        teacher_config, teacher = load_pretrained(tcfg["path"], mesh=mesh)
    else:
        teacher_config = _model_config(tcfg["model"], vocab)
        teacher = shard_params(init_params(teacher_config, jax.random.fold_in(key, 0)), logical_axes(teacher_config), mesh)
        if tcfg["prepare_steps"]:
            c = _step_config(run, teacher_config, None, "supervised", tcfg["prepare_steps"])
            state = init_state(c, teacher, jax.random.fold_in(key, 2))
            state, _ = train_loop(c, state, None, _iterator(run, examples, 100), mesh, run_dir,
                                  steps=tcfg["prepare_steps"], run=run, log=log, name="teacher")
            teacher = state["params"]
            if int(jax.device_get(state["step"])) < tcfg["prepare_steps"]:
                return {"stopped_at": int(jax.device_get(state["step"])), "phase": "teacher"}
            save_pretrained(teacher_config, teacher, run_dir / "teacher")
    if teacher_config.vocab_size != vocab:
        raise TrainingError(f"vocab sizes differ: teacher {teacher_config.vocab_size}, tokenizer {vocab} — "
                            "teacher and student must share a tokenizer")

    scfg = run["student"]
    if scfg["path"]:
        student_config, params = load_pretrained(scfg["path"], mesh=mesh)
    elif scfg["init"] == "teacher":
        student_config, params = teacher_config, jax.tree.map(jnp.copy, teacher)
    elif scfg["init"] == "random":
        student_config = teacher_config
        params = shard_params(init_params(student_config, jax.random.fold_in(key, 5)), logical_axes(student_config),
                              mesh)
    else:
        raise TrainingError(f"student.init={scfg['init']!r}; valid: teacher, random")
    steps = run["train"]["steps"]
    c = _step_config(run, student_config, teacher_config, scfg["mode"], steps)
    state = init_state(c, params, jax.random.fold_in(key, 3), lora_rank=scfg["lora_rank"],
                       lora_targets=tuple(scfg["lora_targets"]))
    p = run["pruning"]
    schedule = calibration = None
    if p["final_ratio"]:
        schedule = PruningSchedule(p["final_ratio"], stages=p["stages"], kind=p["kind"], interval=p["interval"],
                                   start=p["start"])
        cal_iter = _iterator(run, examples, 200)
        calibration = [{k: jnp.asarray(v) for k, v in next(cal_iter).items() if k in ("tokens", "segment_ids")}
                       for _ in range(p["calibration_batches"])]
    cache = None
    if c.mode == "cached":
        from jaxdistill.data import TargetSettings, build_teacher_cache

        cache = build_teacher_cache(teacher_config, teacher, examples, run_dir / "teacher-cache",
                                    format=run["data"]["format"], tokenizer_id=str(run["data"]["tokenizer"]),
                                    settings=TargetSettings(method=scfg["cache_method"], k=scfg["cache_k"],
                                                            temperature=run["loss"]["temperature"], seed=run["seed"]),
                                    seq_len=run["train"]["seq_len"])
        log(f"teacher cache: {cache.meta['positions']} supervised positions in {cache.path}")
    state, last = train_loop(c, state, teacher, _iterator(run, examples), mesh, run_dir, steps=steps, run=run,
                             log=log, schedule=schedule, calibration=calibration, name="student",
                             teacher_cache=cache)
    done = int(jax.device_get(state["step"]))
    result = {"phase": "student", "steps": done, "final": last, "data": counts,
              "optimizer_state_bytes": optimizer_state_bytes(state), "mode": c.mode}
    if done >= steps:
        final = student_params(c, state["params"], state["lora"], state["masks"])
        small_config, small = compact(student_config, jax.device_get(final), jax.device_get(state["masks"]))
        save_pretrained(small_config, small, run_dir / "student")
        result.update(compression_ratio=compression_ratio(student_config, small_config),
                      student_params=param_count(small_config)["total"],
                      teacher_params=param_count(teacher_config)["total"])
        write_json(run_dir / "result.json", result)
        log(f"student: {result['student_params']:,} parameters ({result['compression_ratio']['total']:.3f} removed), "
            f"exported to {run_dir / 'student'}; last loss {last.get('loss', float('nan')):.4f}")
    return result

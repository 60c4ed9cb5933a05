"""Online RL: prompts → G samples each → rewards → advantages → objective → optimizer step(s).

One step (:meth:`OnlineTrainer.step`), top to bottom:

1. **collect** the step's samples (:class:`~divalign.trainers.rollouts.RolloutCollector`): completions with their
   behaviour log-probabilities (they serve as π_old, so no extra pass), rewards, and what the objective's rollout
   plan asks for (dynamic sampling, overlong shaping, truncation mask, anchors);
2. **score** before the update: π_old of anchors and the value head's predictions (a no-grad pass of the policy,
   when needed), and the frozen reference, unless it can run inside the policy's gradient pass (one update per
   batch, and nothing before the update reads it);
3. **advantages** from the registered estimator (:mod:`divalign.advantages`), with the objective's KL penalty folded
   into the reward;
4. **update**: ``ppo_epochs`` passes over the batch, each split into ``minibatches`` optimizer steps; per
   micro-batch of whole groups one forward of the policy, the objective, backward (losses are normalised by the
   counts of the minibatch, so accumulation equals one big batch); an objective with an off-policy part (f-HAL)
   adds it on a preference batch per optimizer step;
5. the sampler sees the new weights.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import Tensor

from divalign import advantages, rewards
from divalign.advantages import Advantages, EstimatorInputs
from divalign.data.preferences import Unpaired
from divalign.data.tokens import SequenceBatch
from divalign.generation import make_sampler
from divalign.models import completion_forward, configure, set_training
from divalign.objectives import OnlineBatch
from divalign.objectives.kl import ESTIMATORS as KL_ESTIMATORS
from divalign.objectives.kl import k3
from divalign.objectives.policy import TIS_MODES, PolicyOptions, truncated_is_weights
from divalign.parallel import DTYPES, World, resolve_dtype
from divalign.rewards import RewardOptions
from divalign.tasks.arithmetic import ArithmeticConfig
from divalign.trainers import scoring
from divalign.trainers.engine import Engine
from divalign.trainers.loop import Clock, MetricSums
from divalign.trainers.offpolicy import PreferencePart
from divalign.trainers.optim import Optimization
from divalign.trainers.options import (
    AdapterOptions,
    CompileOptions,
    ModelOptions,
    ObjectiveChoice,
    OptimizerOptions,
    RunOptions,
    TrainingDeviceOptions,
)
from divalign.trainers.rollouts import Collected, RolloutCollector, Sampling


@dataclass
class RLConfig(ObjectiveChoice, ModelOptions, AdapterOptions, RewardOptions, CompileOptions, TrainingDeviceOptions,
               OptimizerOptions, RunOptions):
    """Online RL (GRPO family, RLOO, PPO, DaGRPO, f-GRPO, f-HAL, ...) on a local Hugging Face causal LM; the model
    is also the frozen reference."""

    output_dir: str = "runs/rl"
    objective: str = "fgrpo"
    task: str = ""
    """Built-in task giving prompts and reward (arithmetic); leave empty to train on --prompts."""
    prompts: str = ""
    """File of prompts with gold answers (used when --task is empty)."""
    prompt_field: str = "prompt"
    """Field of --prompts holding the prompt text (GSM8K: question)."""
    answer_field: str = "answer"
    """Field of --prompts holding the gold answer."""
    reward: str = ""
    """Reward spec: numeric, exact, partial, math, rm:FOLDER, module:function, or a weighted sum such as
    0.8*exact+0.2*rm:F; empty means the task's own reward, or numeric for --prompts."""
    preference_data: str = ""
    """Preference pairs (file or built-in name) for an objective with an off-policy part (f-HAL)."""
    preference_batch_size: int = 16
    """Preference responses (chosen + rejected) per optimizer step, for an objective with an off-policy part."""
    drop_identical_pairs: bool = False
    """Leave out --preference-data pairs whose chosen and rejected are identical (with a warning) instead of
    stopping."""
    advantage: str = "auto"
    """Advantage estimator: auto (the objective's own), or another registered estimator the objective can use
    (group, group_mean, rloo, ...)."""
    steps: int = 100
    """Number of RL steps (each samples one batch)."""
    prompts_per_step: int = 32
    """Prompts per step; each gets num_generations completions."""
    num_generations: int = 8
    """Completions sampled per prompt (the group size G)."""
    max_new_tokens: int = 16
    """Completion-token budget."""
    temperature: float = 1.0
    """Sampling temperature (log-probabilities are computed at the same temperature)."""
    ppo_epochs: int = 1
    """Passes over each batch (PPO-style reuse of the samples; 1: strictly on-policy)."""
    minibatches: int = 1
    """Optimizer steps per pass: the batch's groups are split into this many minibatches."""
    micro_batch_prompts: int = 0
    """Prompts per forward/backward micro-batch (0: a whole minibatch at once)."""
    log_reference_kl: bool = True
    """Keep a frozen reference to log KL even when the objective does not need it."""
    sampling_dtype: str = "auto"
    """Precision of sampling: auto (the run's --dtype), fp32, bf16 or fp16. When it differs from the training
    precision, the trainer scores the samples itself before the update (one forward without gradient) and logs the
    mismatch between the two (mismatch_kl)."""
    tis_cap: float = 0.0
    """Truncated importance sampling against the sampler/trainer mismatch: each token's policy-gradient term is
    weighted by min(π_train/π_sampler, C) with C this cap (0: off; > 1 when on, 2 is common). Scores the samples
    with the trainer's forward as sampling_dtype does."""
    tis_mode: str = "truncate"
    """truncate (weight min(ratio, C)) or mask (weight 1 inside [1/C, C], 0 outside: the masked variant)."""
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)

    families = ("online",)

    def __post_init__(self):
        super().__post_init__()
        estimator = advantages.get(self.estimator)
        options = self.objective_options
        if self.advantage != "auto" and options.own_estimator_only and self.advantage != options.advantage:
            raise ValueError(f"advantage: objective '{self.objective}' works with its own estimator "
                             f"'{options.advantage}' only (got '{self.advantage}')")
        if not estimator.usable_with(options):
            raise ValueError(f"advantage: estimator '{self.estimator}' needs options that objective "
                             f"'{self.objective}' does not have")
        if self.sampling_dtype not in ("auto", *DTYPES):
            raise ValueError(f"sampling_dtype: expected one of auto, {', '.join(DTYPES)} (got '{self.sampling_dtype}')")
        if self.tis_mode not in TIS_MODES:
            raise ValueError(f"tis_mode: expected one of {', '.join(TIS_MODES)} (got '{self.tis_mode}')")
        if self.tis_cap and not self.tis_cap > 1:
            raise ValueError(f"tis_cap must be 0 (off) or > 1 (got {self.tis_cap})")
        if self.tis_cap and not isinstance(options, PolicyOptions):
            raise ValueError(f"tis_cap: objective '{self.objective}' does not apply importance weights (the "
                             "policy-gradient objectives of divalign.objectives.policy do)")
        if self.num_generations < estimator.group_size_needed(options):
            raise ValueError(f"num_generations: the advantage estimator '{self.estimator}' compares the completions of "
                             f"a prompt, so it needs num-generations >= {estimator.min_group_size} (got "
                             f"{self.num_generations}; one completion per prompt would train on zero advantages)")

    @property
    def estimator(self) -> str:
        """The advantage estimator's name (the objective's own unless ``advantage`` names another)."""
        return self.objective_options.advantage if self.advantage == "auto" else self.advantage

    @property
    def needs_reference(self) -> bool:
        """Whether the run keeps a frozen reference (the objective reads it, or the KL to it is logged)."""
        return self.objective_options.needs_reference() or self.log_reference_kl


@dataclass
class Scored:
    """What the update reads besides the sampled batch, computed before it."""

    sequences: SequenceBatch
    old_logprobs: Tensor  #: (B, T) π_old: sampling's own; the trainer's for anchors, and for all rows when rescored
    ref_logprobs: Tensor | None  #: (B, T) the reference's, unless it runs in the update pass
    values: Tensor | None  #: (B, T) the value head's predictions at sampling time
    sampler_logprobs: Tensor  #: (B, T) the sampler's own log-probabilities of the sampled tokens
    is_weights: Tensor | None  #: (B, T) truncated importance weights of π_old against the sampler (TIS), or None


class OnlineTrainer:
    """Holds the policy, reference, rollout collector, optimizer and objective; ``step`` runs one RL step."""

    def __init__(self, config: RLConfig, policy, tokenizer, prompt_source, reward_fn, reference=None,
                 preference: list[Unpaired] | None = None, world: World | None = None):
        self.config, self.policy, self.tokenizer, self.reference = config, policy, tokenizer, reference
        self.objective, self.options = config.chosen, config.objective_options
        self.estimator = advantages.get(config.estimator)
        self.kl_penalty = self.options.kl_penalty()
        self.value_head = value_head(policy.config.hidden_size) if self.estimator.needs_values else None
        trained = [policy] if self.value_head is None else [policy, self.value_head]
        frozen = () if reference is None else (reference,)
        self.engine = Engine(trained, world or World(), config, frozen)
        for model in [policy, *frozen]:
            configure(model, fast_path=config.fast_path, compile=config.compile, dtype=self.engine.dtype,
                      gradient_checkpointing=config.gradient_checkpointing and model is policy)
        self.sampler = make_sampler(policy, tokenizer)
        self.optimization = Optimization(trained, config, config.steps * config.ppo_epochs * config.minibatches,
                                         self.engine)
        scorer = rewards.get(self.options.score, config) if self.estimator.needs_scores else None
        sampling_dtype = (self.engine.dtype if config.sampling_dtype == "auto"
                          else resolve_dtype(config.sampling_dtype, self.engine.device))
        #: the samples are scored again by the trainer before the update: the sampler's probabilities are not its own
        self.rescore = config.tis_cap > 0 or sampling_dtype != self.engine.dtype
        sampling = Sampling(config.prompts_per_step, config.num_generations, config.max_new_tokens,
                            config.temperature, config.seed, sampling_dtype)
        self.collector = RolloutCollector(prompt_source, self.sampler, tokenizer, reward_fn, sampling,
                                          self.options.rollout_plan(), scorer, self.engine)
        self.preference = None
        if self.objective.preference_loss is not None:
            if not preference:
                raise ValueError(f"objective '{self.objective.name}' needs preference data for its off-policy part")
            with self.engine.autocast():
                self.preference = PreferencePart(preference, tokenizer, reference, config.max_new_tokens * 8,
                                                 config.preference_batch_size, config.seed, self.engine.device)

    # ------------------------------------------------------------------ state for checkpoints
    def state_dict(self, step: int) -> dict:
        state = {"step": step, **self.optimization.state_dict()}
        if self.value_head is not None:
            state["value_head"] = self.value_head.state_dict()
        return state

    def load_state_dict(self, state: dict) -> int:
        self.optimization.load_state_dict(state)
        if self.value_head is not None:
            self.value_head.load_state_dict(state["value_head"])
        self.sampler.refresh()
        return int(state["step"])

    # ------------------------------------------------------------------ one step
    def step(self, step: int) -> dict:
        clock = Clock()
        set_training(self.policy, False)
        batch = self.collector.collect(step)
        self.sampler.release()
        if batch is None:  # dynamic sampling found no group with signal: train on nothing this step
            return {"step": step + 1, "groups_kept": 0, "skipped": 1.0, "step_s": clock.elapsed()}
        batch.to(self.engine.device)
        with clock("reference_s"):
            scored = self._score(batch)
        advantage = self._advantages(batch, scored)
        sums = self._update(step, batch, scored, advantage, clock)
        with clock("optimizer_s"):
            self.sampler.refresh()
        return {**self._row(step, batch, sums, clock), **self._mismatch(batch, scored)}

    # ------------------------------------------------------------------ its parts
    def _score(self, batch: Collected) -> Scored:
        """The passes before the update, each process scoring its share of the groups (every process gets every
        row's values)."""
        sequences = batch.rollout.sequences()
        groups = batch.groups()
        mine = self._micro_batches([groups[k] for k in self.engine.evaluation_share(len(groups))])
        temperature = self.config.temperature
        old, values = batch.rollout.logprobs.clone(), None
        with self.engine.autocast():
            if batch.anchors.any() or self.value_head is not None or self.rescore:
                now, values = self._gathered_rows(scoring.token_logprobs(
                    self.policy, sequences, mine, batch.group_size, temperature, self.value_head), mine)
                # anchors: ρ = 1 at the first update; rescored: π_old is the trainer's, not the sampler's
                old = now if self.rescore else torch.where(batch.anchors.unsqueeze(-1), now, old)
            ref = None
            if self.reference is not None and not self._reference_in_update():
                ref = self._gathered_rows(scoring.token_logprobs(self.reference, sequences, mine, batch.group_size,
                                                                 temperature), mine)[0]
        sampler = batch.rollout.logprobs
        weights = None
        if self.config.tis_cap:
            weights = truncated_is_weights(old, sampler, self.config.tis_cap, self.config.tis_mode)
        return Scored(sequences, old, ref, values, sampler, weights)

    def _gathered_rows(self, scored: tuple[Tensor, Tensor | None], micro: list[list[int]]):
        """Rows scored by each process (``micro``: this one's), joined: every process gets the whole batch's."""
        if self.engine.sharding in (None, "fsdp"):  # one process, or FSDP2 (each scores all rows, in lockstep)
            return scored
        rows = [r for m in micro for r in m]
        parts = self.engine.world.gather((rows, *(None if t is None else t[rows].cpu() for t in scored)))
        out = tuple(None if t is None else t.clone() for t in scored)
        for other_rows, *tensors in parts:
            for target, part in zip(out, tensors):
                if target is not None:
                    target[other_rows] = part.to(target.device)
        return out

    def _advantages(self, batch: Collected, scored: Scored) -> Advantages:
        mask = batch.rollout.completion_mask
        kl = None
        if self.kl_penalty is not None and scored.ref_logprobs is not None:
            kl = KL_ESTIMATORS[self.kl_penalty.estimator](scored.old_logprobs, scored.ref_logprobs) * mask
        inputs = EstimatorInputs(batch.rewards, batch.group_ids, batch.num_groups, mask, kl,
                                 self.kl_penalty.coef if kl is not None else 0.0, scored.values, batch.scores)
        return self.estimator.fn(inputs, self.options)

    def _update(self, step: int, batch: Collected, scored: Scored, advantage: Advantages, clock: Clock
                ) -> MetricSums:
        cfg, groups = self.config, batch.groups()
        mask = batch.rollout.completion_mask
        whole = OnlineBatch(logprobs=scored.old_logprobs, old_logprobs=scored.old_logprobs,
                            ref_logprobs=scored.ref_logprobs, mask=mask, advantages=advantage.sequence,
                            rewards=batch.rewards, group_ids=batch.group_ids, num_sequences=len(batch.prompts),
                            num_groups=batch.num_groups, num_tokens=int(mask.sum()), max_length=cfg.max_new_tokens,
                            num_nonempty=int((mask.sum(-1) > 0).sum()), token_advantages=advantage.token,
                            old_values=scored.values, returns=advantage.returns,
                            is_weights=scored.is_weights)
        sums = MetricSums()
        rng = random.Random(f"minibatches-{cfg.seed}-{step}")
        world = self.engine.world
        for chosen in minibatch_groups(len(groups), cfg.ppo_epochs, cfg.minibatches, rng):
            rows = [r for k in chosen for r in groups[k]]
            counts = {"num_sequences": len(rows), "num_groups": len(chosen), "num_tokens": int(mask[rows].sum()),
                      "num_nonempty": int((mask[rows].sum(-1) > 0).sum())}
            mine = [groups[chosen[i]] for i in world.share(len(chosen))]  # this process's groups of the minibatch
            passes = [self._pass(whole, micro, counts, scored.sequences, batch.group_size)
                      for micro in self._micro_batches(mine)]
            if self.preference is not None:
                update = (step * cfg.ppo_epochs * cfg.minibatches) + len(sums.updates)
                passes += self.preference.passes(self.policy, self.objective, self.options, update, world)
            filler = self._pass(whole, groups[chosen[0]], counts, scored.sequences, batch.group_size)
            with clock("forward_backward_s"):
                metrics = self.engine.accumulate(passes, filler)
            sums.add(metrics)
            with clock("optimizer_s"):
                sums.updates.append(self.optimization.step(metrics["loss"] + metrics.get("preference_loss", 0.0)))
        return sums

    def _pass(self, whole: OnlineBatch, rows: list[int], counts: dict, sequences: SequenceBatch, group_size: int):
        """The pass of one micro-batch: the policy's forward (with the reference in the same pass when it runs
        there) and the objective; returns the loss and the micro-batch's shares of the metrics."""
        def run():
            index = torch.tensor(rows, device=sequences.input_ids.device)
            reference = self.reference if self._reference_in_update() else None
            out = completion_forward(self.policy, sequences.select(index), self.config.temperature,
                                     with_entropy=True, group_size=group_size, with_hidden=self.value_head is not None,
                                     reference=reference)
            values = None if self.value_head is None else self.value_head(out.hidden.float()).squeeze(-1)
            part = whole.rows(index, out.logprobs, out.reference_logprobs, values, **counts)
            loss, metrics = self.objective.loss(part, self.options)
            metrics["loss"] = float(loss.item())
            metrics["entropy"] = float((out.entropy * part.mask).sum()) / max(counts["num_tokens"], 1)
            if part.ref_logprobs is not None:
                seq_kl = part.sequence_sum(k3(out.logprobs.detach(), part.ref_logprobs))
                metrics["kl"] = float(seq_kl.sum()) / counts["num_sequences"]
            return loss, metrics
        return run

    def _row(self, step: int, batch: Collected, sums: MetricSums, clock: Clock) -> dict:
        task = batch.task_rewards[~batch.anchors]
        means = sums.means()
        updates = sums.updates
        return {
            "step": step + 1,
            "reward_mean": float(task.mean()),
            "reward_std": float(task.std(unbiased=False)),
            "pass_rate": float((task >= 1.0).float().mean()),
            "completion_length": float(batch.rollout.lengths[~batch.anchors].mean()),
            "truncated_fraction": float(batch.rollout.truncated[~batch.anchors].float().mean()),
            "loss": means.pop("loss"),
            "grad_norm": sum(u["grad_norm"] for u in updates) / len(updates),
            "lr": updates[-1]["lr"],
            **skips(updates),
            **batch.stats,
            **means,
            **batch.timings,
            **clock.seconds,
            "step_s": clock.elapsed(),
        }

    def _mismatch(self, batch: Collected, scored: Scored) -> dict:
        """How far the sampler's probabilities of the sampled tokens are from the trainer's: k3 of the sampler
        against the trainer, mean per real token, and with TIS the share of tokens whose weight was cut."""
        if not self.rescore:
            return {}
        mask = batch.rollout.completion_mask
        tokens = mask.sum().clamp(min=1)
        out = {"mismatch_kl": float((k3(scored.sampler_logprobs, scored.old_logprobs) * mask).sum() / tokens)}
        if scored.is_weights is not None:
            weights = scored.is_weights
            cut = weights < 1.0 if self.config.tis_mode == "mask" else weights >= self.config.tis_cap
            out["tis_cut_fraction"] = float((cut.float() * mask).sum() / tokens)
        return out

    def _micro_batches(self, groups: list[list[int]]) -> list[list[int]]:
        """Rows of each micro-batch: ``micro_batch_prompts`` whole groups at a time (all of them with 0)."""
        per = self.config.micro_batch_prompts or len(groups)
        return [[r for g in groups[i:i + per] for r in g] for i in range(0, len(groups), per)]

    def _reference_in_update(self) -> bool:
        """Whether the reference can run in the policy's gradient pass instead of a pass of its own: one update per
        batch (each row is in exactly one gradient pass), and neither a KL penalty in the reward nor a value head's
        pass needs it before the update."""
        cfg = self.config
        return (self.reference is not None and cfg.ppo_epochs == 1 and cfg.minibatches == 1
                and self.value_head is None and self.kl_penalty is None)


def skips(updates: list[dict]) -> dict:
    """How many of a step's optimizer updates were left out, and why (the first reason)."""
    skipped = [u for u in updates if u["skipped_updates"]]
    return {"skipped_updates": len(skipped), **({"skip_reason": skipped[0]["skip_reason"]} if skipped else {})}


def minibatch_groups(num_groups: int, epochs: int, minibatches: int, rng: random.Random) -> list[list[int]]:
    """The groups of each optimizer step: ``epochs`` passes, each shuffled when there is more than one update and
    split into ``minibatches`` parts (empty parts left out)."""
    out = []
    for _ in range(epochs):
        order = list(range(num_groups))
        if epochs > 1 or minibatches > 1:
            rng.shuffle(order)
        size = -(-num_groups // minibatches)
        out += [order[m * size:(m + 1) * size] for m in range(minibatches) if order[m * size:(m + 1) * size]]
    return out


def value_head(hidden_size: int) -> torch.nn.Linear:
    """PPO's value head on the policy's last hidden state, starting at zero."""
    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head

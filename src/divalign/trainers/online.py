"""Online RL: prompts → G samples each → rewards → advantages → objective → optimizer step(s).

One step, top to bottom (:meth:`OnlineTrainer.step`):

1. collect the step's samples (:mod:`divalign.trainers.rollouts`): ``num_generations`` completions per prompt
   with their behaviour log-probabilities (they serve as π_old, so no extra pass), rewards, and the trainer-side
   pieces of DAPO (dynamic sampling, overlong punishment, truncation mask) and DaGRPO (anchors);
2. one no-grad forward of the frozen reference on the same sequences (when the objective or the KL log needs it);
3. advantages: group-normalised (GRPO, DAPO, f-GRPO), group-centred (Dr. GRPO), leave-one-out with the KL in the
   reward (RLOO), distinctiveness-masked pairs (DaGRPO), or per-token GAE from a value head (PPO);
4. ``ppo_epochs`` passes over the batch, each split into ``minibatches`` optimizer steps; per micro-batch of
   whole groups one forward of the policy, the objective, backward (losses are normalised by the counts of the
   minibatch, so accumulation equals one big batch). f-HAL adds its off-policy FDO part on a preference batch;
5. the sampler sees the new weights.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from divalign import advantages, objectives
from divalign.data.preferences import Unpaired
from divalign.generation import make_sampler
from divalign.models import SequenceBatch, completion_forward, set_training
from divalign.objectives import OnlineBatch, UnpairedBatch
from divalign.objectives import kl as kl_estimators
from divalign.objectives.batch import rows_of
from divalign.objectives.dagrpo import DaGRPOOptions
from divalign.objectives.fgrpo import FGRPOOptions
from divalign.objectives.fhal import FHALOptions
from divalign.objectives.grpo import DAPOOptions, DrGRPOOptions, GRPOOptions
from divalign.objectives.ppo import PPOOptions
from divalign.objectives.rloo import RLOOOptions
from divalign.tasks.arithmetic import ArithmeticConfig
from divalign.trainers.loop import RunOptions
from divalign.trainers.optim import Optimization, OptimizerOptions
from divalign.trainers.rollouts import Collected, collect, step_generator  # noqa: F401  (step_generator: API)


@dataclass
class RLConfig(RunOptions, OptimizerOptions):
    """Online RL with a GRPO-family, PPO, RLOO, f-GRPO or f-HAL objective on a local Hugging Face causal LM."""

    model: str = ""
    """Folder of the policy to train (AutoModelForCausalLM and its tokenizer). It is also the reference."""
    output_dir: str = "runs/rl"
    """Run folder: config, metrics.jsonl, checkpoints/ and the final model/."""
    task: str = ""
    """Built-in task giving prompts and reward (arithmetic); leave empty to train on --prompts."""
    prompts: str = ""
    """File of prompts with gold answers (used when --task is empty)."""
    prompt_field: str = "prompt"
    """Field of --prompts holding the prompt text (GSM8K: question)."""
    answer_field: str = "answer"
    """Field of --prompts holding the gold answer."""
    reward: str = ""
    """Reward spec: numeric, exact, rm:FOLDER, module:function, or a weighted sum such as 0.8*exact+0.2*rm:F;
    empty means the task's own reward, or numeric for --prompts."""
    reward_timeout: float = 10.0
    """Seconds a user reward function may take per completion before it scores 0."""
    preference_data: str = ""
    """f-HAL: preference pairs (file or built-in name) for the off-policy FDO part."""
    preference_batch_size: int = 16
    """f-HAL: preference responses (chosen + rejected) per optimizer step."""
    objective: str = "fgrpo"
    """grpo, dr_grpo, dapo, rloo, ppo, dagrpo, fgrpo or fhal."""
    advantage: str = "auto"
    """Advantage estimator: auto (the objective's), group, group_mean or rloo."""
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
    seed: int = 0
    """Seed of prompts, sampling and initialisation."""
    log_reference_kl: bool = True
    """Keep a frozen reference to log KL even when the objective does not need it."""
    fast_path: bool = True
    """Sample and score Llama-family models through the lean functional path (other models always use their
    Hugging Face forward)."""
    compile: bool = False
    """Compile the lean path's training and scoring forward with torch.compile (slow start, faster steps)."""
    grpo: GRPOOptions = field(default_factory=GRPOOptions)
    dr_grpo: DrGRPOOptions = field(default_factory=DrGRPOOptions)
    dapo: DAPOOptions = field(default_factory=DAPOOptions)
    rloo: RLOOOptions = field(default_factory=RLOOOptions)
    ppo: PPOOptions = field(default_factory=PPOOptions)
    dagrpo: DaGRPOOptions = field(default_factory=DaGRPOOptions)
    fgrpo: FGRPOOptions = field(default_factory=FGRPOOptions)
    fhal: FHALOptions = field(default_factory=FHALOptions)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)

    @property
    def objective_options(self):
        return getattr(self, self.objective)


ESTIMATORS = ("auto", *advantages.ESTIMATORS)


class PreferenceStream:
    """f-HAL's off-policy data: unpaired responses, their reference log-probabilities (computed once), an order."""

    def __init__(self, items: list[Unpaired], tokenizer, reference, config: RLConfig):
        from divalign.data.order import EpochOrder
        from divalign.trainers.preference import encode_dataset, reference_logps

        self.data = encode_dataset(tokenizer, items, config.max_new_tokens * 8, paired=False)
        self.labels = torch.tensor([u.desirable for u in items])
        self.ref = reference_logps(reference, self.data, tokenizer.pad_token_id, config.fast_path)
        self.order = EpochOrder(len(items), f"fhal-{config.seed}")
        self.size = config.preference_batch_size


class OnlineTrainer:
    """Holds the policy, reference, sampler, optimizer and objective; ``step`` runs one RL step."""

    def __init__(self, config: RLConfig, policy, tokenizer, prompt_source, reward_fn, reference=None,
                 preference: list[Unpaired] | None = None):
        self.config = config
        self.policy, self.tokenizer, self.prompts = policy, tokenizer, prompt_source
        self.reward_fn, self.reference = reward_fn, reference
        self.objective = objectives.get(config.objective)
        self.options = config.objective_options
        self.estimator = self.options.advantage if config.advantage == "auto" else config.advantage
        self.sampler = make_sampler(policy, tokenizer, fast=config.fast_path)
        if config.compile:
            from divalign import llama_fast

            llama_fast.enable_compile()
        self.value_head = None
        modules = [policy]
        if self.estimator == "gae":
            self.value_head = torch.nn.Linear(policy.config.hidden_size, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
            modules.append(self.value_head)
        self.optimization = Optimization(modules, config, config.steps * config.ppo_epochs * config.minibatches)
        self.scorer = None
        if self.estimator == "distinct":
            from divalign import rewards
            from divalign.rewards.partial import partial_credit

            spec = self.options.score
            self.scorer = rewards.PerSample(partial_credit, "partial") if spec == "partial" else rewards.get(spec)
        self.preference = PreferenceStream(preference, tokenizer, reference, config) if preference else None
        self._prompt_ids: dict[str, list[int]] = {}

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

    def encode(self, prompt: str) -> list[int]:
        if prompt not in self._prompt_ids:
            self._prompt_ids[prompt] = self.tokenizer(prompt)["input_ids"]
        return self._prompt_ids[prompt]

    # ------------------------------------------------------------------ pieces of a step
    def _forward(self, model, sequences: SequenceBatch, group: int, with_entropy=False, with_values=False,
                 reference=None):
        out = completion_forward(model, sequences, self.config.temperature, with_entropy, group,
                                 self.config.fast_path, with_hidden=with_values, reference=reference)
        values = self.value_head(out.hidden.float()).squeeze(-1) if with_values else None
        return out.logprobs, out.entropy, values, out.reference_logprobs

    def _reference_in_update(self) -> bool:
        """Whether the reference can run in the policy's gradient pass instead of a pass of its own: one update per
        batch (each row is in exactly one gradient pass) and nothing before the update needs the reference."""
        cfg = self.config
        return (self.reference is not None and cfg.ppo_epochs == 1 and cfg.minibatches == 1
                and self.estimator != "gae" and not getattr(self.options, "kl_in_reward", 0.0))

    def _groups(self, batch: Collected) -> list[list[int]]:
        """Row indices of each group (anchors join their group)."""
        rows = [[] for _ in range(batch.num_groups)]
        for row, gid in enumerate(batch.group_ids.tolist()):
            rows[gid].append(row)
        return rows

    @torch.no_grad()
    def _no_grad_pass(self, model, sequences: SequenceBatch, batch: Collected, micro_groups: list[list[int]],
                      with_values: bool = False):
        """Log-probabilities (and values) of every row, micro-batch by micro-batch, without gradient."""
        logps = torch.zeros_like(batch.rollout.logprobs)
        values = torch.zeros_like(batch.rollout.logprobs) if with_values else None
        for rows in micro_groups:
            index = torch.tensor(rows)
            lp, _, v, _ = self._forward(model, sequences.select(index), batch.group_size, with_values=with_values)
            logps[index] = lp
            if with_values:
                values[index] = v
        return logps, values

    def _advantages(self, batch: Collected, old_logps, ref_logps, values):
        rewards, mask = batch.rewards, batch.rollout.completion_mask
        if getattr(self.options, "kl_in_reward", 0.0) and ref_logps is not None:
            rewards = rewards - self.options.kl_in_reward * ((old_logps - ref_logps) * mask).sum(-1)
        if self.estimator == "gae":
            opts = self.options
            token_rewards = torch.zeros_like(old_logps)
            if opts.kl_coef and ref_logps is not None:
                kl = old_logps - ref_logps if opts.kl_estimator == "k1" else kl_estimators.k3(old_logps, ref_logps)
                token_rewards = -opts.kl_coef * kl * mask
            last = (mask.sum(-1).long() - 1).clamp(min=0)
            token_rewards[torch.arange(len(rewards)), last] += rewards
            adv, returns = advantages.gae(token_rewards, values, mask, opts.gamma, opts.lam)
            if opts.whiten_advantages:
                adv = advantages.whiten(adv, mask)
            return torch.zeros_like(rewards), adv, returns
        if self.estimator == "distinct":
            scores = torch.tensor(self.scorer(batch.prompts, self.tokenizer.batch_decode(
                batch.rollout.completion_ids, skip_special_tokens=True), batch.answers), dtype=torch.float)
            return advantages.distinct_pairs(rewards, scores, batch.group_ids, batch.num_groups,
                                             self.options.threshold), None, None
        return advantages.compute(self.estimator, rewards, batch.group_ids, batch.num_groups), None, None

    def _preference_part(self, step: int, update: int) -> dict:
        """f-HAL's off-policy FDO part on the next preference batch (backward included)."""
        pref = self.preference
        units = pref.order.take((step * self.config.ppo_epochs * self.config.minibatches + update) * pref.size,
                                pref.size)
        from divalign.trainers.preference import sequence_logps

        logps, _ = sequence_logps(self.policy, pref.data, units, self.tokenizer.pad_token_id, self.config.fast_path)
        labels = pref.labels[units]
        batch = UnpairedBatch(logps, pref.ref[units], labels, int(labels.sum()), int((~labels).sum()))
        loss, metrics = self.objective.loss(None, batch, self.options)
        loss.backward()
        return metrics

    # ------------------------------------------------------------------ one step
    def step(self, step: int) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        set_training(self.policy, False)
        batch = collect(self, step)
        if batch is None:
            return {"step": step + 1, "groups_kept": 0, "skipped": 1.0, "step_s": time.perf_counter() - t0}
        timings = dict(batch.timings)
        rollout, sequences = batch.rollout, batch.rollout.sequences()
        groups = self._groups(batch)
        per_micro = cfg.micro_batch_prompts or len(groups)
        micro_all = [[r for g in groups[i:i + per_micro] for r in g] for i in range(0, len(groups), per_micro)]

        t = time.perf_counter()
        old_logps = rollout.logprobs.clone()
        if batch.anchors.any() or self.value_head is not None:
            logps_now, values = self._no_grad_pass(self.policy, sequences, batch, micro_all,
                                                   with_values=self.value_head is not None)
            old_logps = torch.where(batch.anchors.unsqueeze(-1), logps_now, old_logps)  # anchors: ρ = 1 (dagrpo)
        else:
            values = None
        reference_in_update = self._reference_in_update()
        ref_logps = None
        if reference_in_update:
            ref_logps = torch.zeros_like(old_logps)  # each row filled by its gradient pass, before the loss reads it
        elif self.reference is not None:
            ref_logps = self._no_grad_pass(self.reference, sequences, batch, micro_all)[0]
        timings["reference_s"] = time.perf_counter() - t

        seq_adv, token_adv, returns = self._advantages(batch, old_logps, ref_logps, values)
        mask = rollout.completion_mask
        whole = OnlineBatch(logprobs=old_logps, old_logprobs=old_logps, ref_logprobs=ref_logps, mask=mask,
                            advantages=seq_adv, rewards=batch.rewards, group_ids=batch.group_ids,
                            num_sequences=len(batch.prompts), num_groups=batch.num_groups,
                            num_tokens=int(mask.sum()), max_length=cfg.max_new_tokens, token_advantages=token_adv,
                            old_values=values, returns=returns)

        summed, loss_total, updates = {}, 0.0, []
        timings["forward_backward_s"] = timings["optimizer_s"] = 0.0
        rng = random.Random(f"minibatches-{cfg.seed}-{step}")
        for epoch in range(cfg.ppo_epochs):
            order = list(range(len(groups)))
            if cfg.ppo_epochs > 1 or cfg.minibatches > 1:
                rng.shuffle(order)
            size = -(-len(order) // cfg.minibatches)
            for m in range(cfg.minibatches):
                chosen = order[m * size:(m + 1) * size]
                if not chosen:
                    continue
                mb_rows = [r for k in chosen for r in groups[k]]
                counts = {"num_sequences": len(mb_rows), "num_groups": len(chosen),
                          "num_tokens": int(mask[mb_rows].sum()), "max_length": cfg.max_new_tokens}
                t = time.perf_counter()
                for i in range(0, len(chosen), per_micro):
                    rows = torch.tensor([r for k in chosen[i:i + per_micro] for r in groups[k]])
                    logps, entropy, vals, ref_rows = self._forward(
                        self.policy, sequences.select(rows), batch.group_size, with_entropy=True,
                        with_values=self.value_head is not None, reference=self.reference if reference_in_update
                        else None)
                    if ref_rows is not None:
                        ref_logps[rows] = ref_rows
                    part = rows_of(whole, rows, logps, vals)
                    for key, value in counts.items():
                        setattr(part, key, value)
                    if self.objective.family == "hybrid":
                        loss, metrics = self.objective.loss(part, None, self.options)
                    else:
                        loss, metrics = self.objective.loss(part, self.options)
                    loss.backward()
                    loss_total += float(loss.item())
                    metrics["entropy"] = float((entropy * part.mask).sum()) / max(counts["num_tokens"], 1)
                    if ref_logps is not None:
                        seq_kl = part.sequence_sum(kl_estimators.k3(logps.detach(), part.ref_logprobs))
                        metrics["kl"] = float(seq_kl.sum()) / counts["num_sequences"]
                    # Metrics are shares of this minibatch's value; their sum over updates is averaged below.
                    for key, value in metrics.items():
                        summed[key] = summed.get(key, 0.0) + value
                if self.preference is not None:
                    for key, value in self._preference_part(step, len(updates)).items():
                        summed[key] = summed.get(key, 0.0) + value
                timings["forward_backward_s"] += time.perf_counter() - t
                t = time.perf_counter()
                updates.append(self.optimization.step())
                timings["optimizer_s"] += time.perf_counter() - t
        n_updates = len(updates)
        summed = {key: value / n_updates for key, value in summed.items()}
        t = time.perf_counter()
        self.sampler.refresh()
        timings["optimizer_s"] += time.perf_counter() - t
        timings["step_s"] = time.perf_counter() - t0

        task = batch.task_rewards[~batch.anchors]
        return {
            "step": step + 1,
            "reward_mean": float(task.mean()),
            "reward_std": float(task.std(unbiased=False)),
            "pass_rate": float((task >= 1.0).float().mean()),
            "completion_length": float(rollout.lengths[~batch.anchors].mean()),
            "truncated_fraction": float(rollout.truncated[~batch.anchors].float().mean()),
            "loss": loss_total / n_updates,
            "grad_norm": sum(u["grad_norm"] for u in updates) / n_updates,
            "lr": updates[-1]["lr"],
            **batch.stats,
            **summed,
            **timings,
        }

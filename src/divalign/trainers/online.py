"""Online RL: prompts → G samples each → rewards → group advantages → objective → optimizer step.

One step, top to bottom (:meth:`OnlineTrainer.step`):

1. take the step's prompts (a pure function of seed and step) and sample ``num_generations`` completions per
   prompt, keeping the behaviour log-probabilities (they serve as π_old: one update per batch, no extra pass);
2. score the completions and turn rewards into group advantages;
3. one no-grad forward of the frozen reference on the same sequences (when the objective or the KL log needs it);
4. per micro-batch of whole groups: one forward of the policy, the objective, backward (losses are normalised by
   whole-batch counts, so accumulation equals one big batch);
5. clip the gradient norm, optimizer and schedule step, and let the sampler see the new weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from divalign import advantages, objectives
from divalign.generation import make_sampler
from divalign.models import completion_logprobs
from divalign.objectives import OnlineBatch
from divalign.objectives import kl as kl_estimators
from divalign.objectives.fgrpo import FGRPOOptions
from divalign.objectives.grpo import GRPOOptions
from divalign.tasks.arithmetic import ArithmeticConfig
from divalign.trainers.optim import Optimization


@dataclass
class RLConfig:
    """Online RL with a GRPO-family or f-GRPO objective on a local Hugging Face causal LM."""

    model: str = ""
    """Folder of the policy to train (AutoModelForCausalLM and its tokenizer). It is also the reference."""
    output_dir: str = "runs/rl"
    """Run folder: config, metrics.jsonl, checkpoints/ and the final model/."""
    task: str = ""
    """Built-in task giving prompts and reward (arithmetic); leave empty to train on --prompts."""
    prompts: str = ""
    """JSONL file of prompts with gold answers (used when --task is empty)."""
    prompt_field: str = "prompt"
    """Field of --prompts holding the prompt text (GSM8K: question)."""
    answer_field: str = "answer"
    """Field of --prompts holding the gold answer."""
    reward: str = ""
    """Reward: numeric (final number, GSM8K style), exact, or module:function; empty means the task's own
    reward, or numeric for --prompts."""
    objective: str = "fgrpo"
    """Online objective: grpo or fgrpo."""
    advantage: str = "group"
    """Advantage estimator: group (GRPO), group_mean (Dr. GRPO, no std) or rloo."""
    steps: int = 100
    """Number of optimizer steps."""
    prompts_per_step: int = 32
    """Prompts per step; each gets num_generations completions."""
    num_generations: int = 8
    """Completions sampled per prompt (the group size G)."""
    max_new_tokens: int = 16
    """Completion-token budget."""
    temperature: float = 1.0
    """Sampling temperature (log-probabilities are computed at the same temperature)."""
    micro_batch_prompts: int = 0
    """Prompts per forward/backward micro-batch (0: the whole step at once)."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW."""
    lr_schedule: str = "constant"
    """constant, linear or cosine (after warm-up)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold (0 disables)."""
    seed: int = 0
    """Seed of prompts, sampling and initialisation."""
    save_every: int = 0
    """Checkpoint every this many steps (0: only the final model)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    resume: bool = False
    """Continue the run in output_dir from its latest checkpoint."""
    log_reference_kl: bool = True
    """Keep a frozen reference to log KL even when the objective does not need it."""
    fast_path: bool = True
    """Sample and score Llama-family models through the lean functional path (other models always use their
    Hugging Face forward)."""
    trust_remote_code: bool = False
    """Allow model folders that ship their own modelling code."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    progress: bool = True
    """Show a progress bar on the console."""
    grpo: GRPOOptions = field(default_factory=GRPOOptions)
    fgrpo: FGRPOOptions = field(default_factory=FGRPOOptions)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)

    @property
    def objective_options(self):
        return getattr(self, self.objective)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The sampling RNG of one step: a pure function of (seed, step), so resume needs no RNG state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class OnlineTrainer:
    """Holds the policy, reference, sampler, optimizer and objective; ``step`` runs one RL step."""

    def __init__(self, config: RLConfig, policy, tokenizer, prompt_source, reward_fn, reference=None):
        self.config = config
        self.policy = policy
        self.tokenizer = tokenizer
        self.prompts = prompt_source
        self.reward_fn = reward_fn
        self.reference = reference
        self.objective = objectives.get(config.objective, family="online")
        self.options = config.objective_options
        self.sampler = make_sampler(policy, tokenizer, fast=config.fast_path)
        self.optimization = Optimization(policy, config, config.steps)
        self._prompt_ids: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ state for checkpoints
    def state_dict(self, step: int) -> dict:
        return {"step": step, **self.optimization.state_dict()}

    def load_state_dict(self, state: dict) -> int:
        self.optimization.load_state_dict(state)
        self.sampler.refresh()
        return int(state["step"])

    # ------------------------------------------------------------------ one step
    def _encode(self, prompt: str) -> list[int]:
        if prompt not in self._prompt_ids:
            self._prompt_ids[prompt] = self.tokenizer(prompt)["input_ids"]
        return self._prompt_ids[prompt]

    def step(self, step: int) -> dict:
        cfg = self.config
        group = cfg.num_generations
        timings = {}
        t0 = time.perf_counter()

        examples = self.prompts.batch(step, cfg.prompts_per_step)
        self.policy.eval()
        rollout = self.sampler.generate(
            [self._encode(ex.prompt) for ex in examples],
            cfg.max_new_tokens,
            cfg.temperature,
            generator=step_generator(cfg.seed, step),
            num_samples=group,
        )
        timings["generate_s"] = time.perf_counter() - t0

        t = time.perf_counter()
        texts = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        prompts = [ex.prompt for ex in examples for _ in range(group)]
        answers = [ex.answer for ex in examples for _ in range(group)]
        rewards = torch.tensor(self.reward_fn(prompts, texts, answers), dtype=torch.float)
        num_groups = len(examples)
        group_ids = torch.arange(num_groups).repeat_interleave(group)
        adv = advantages.compute(cfg.advantage, rewards, group_ids, num_groups)
        timings["score_s"] = time.perf_counter() - t

        t = time.perf_counter()
        sequences = rollout.sequences()
        num_sequences = num_groups * group
        per_micro = (cfg.micro_batch_prompts or num_groups) * group
        micro_batches = [slice(start, start + per_micro) for start in range(0, num_sequences, per_micro)]
        ref_logprobs = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logprobs = torch.cat(
                    [
                        completion_logprobs(
                            self.reference,
                            sequences.select(rows),
                            cfg.temperature,
                            group_size=group,
                            fast=cfg.fast_path,
                        )[0]
                        for rows in micro_batches
                    ]
                )
        timings["reference_s"] = time.perf_counter() - t

        t = time.perf_counter()
        self.policy.train()
        totals = {
            "num_sequences": num_sequences,
            "num_groups": num_groups,
            "num_tokens": int(rollout.completion_mask.sum().item()),
            "max_length": cfg.max_new_tokens,
        }
        summed: dict[str, float] = {}
        loss_total = 0.0
        for rows in micro_batches:
            logprobs, entropy = completion_logprobs(
                self.policy,
                sequences.select(rows),
                cfg.temperature,
                with_entropy=True,
                group_size=group,
                fast=cfg.fast_path,
            )
            batch = OnlineBatch(
                logprobs=logprobs,
                old_logprobs=rollout.logprobs[rows],
                ref_logprobs=None if ref_logprobs is None else ref_logprobs[rows],
                mask=rollout.completion_mask[rows],
                advantages=adv[rows],
                rewards=rewards[rows],
                group_ids=group_ids[rows],
                **totals,
            )
            loss, metrics = self.objective.loss(batch, self.options)
            loss.backward()
            loss_total += float(loss.item())
            metrics["entropy"] = float((entropy * batch.mask).sum().item()) / max(totals["num_tokens"], 1)
            if ref_logprobs is not None:
                seq_kl = batch.sequence_sum(kl_estimators.k3(logprobs.detach(), batch.ref_logprobs))
                metrics["kl"] = float(seq_kl.sum().item()) / totals["num_sequences"]
            for key, value in metrics.items():
                summed[key] = summed.get(key, 0.0) + value
        timings["forward_backward_s"] = time.perf_counter() - t

        t = time.perf_counter()
        update = self.optimization.step()
        self.sampler.refresh()
        timings["optimizer_s"] = time.perf_counter() - t
        timings["step_s"] = time.perf_counter() - t0

        lengths = rollout.lengths
        return {
            "step": step + 1,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "pass_rate": float((rewards >= 1.0).float().mean()),
            "completion_length": float(lengths.mean()),
            "truncated_fraction": float(rollout.truncated.float().mean()),
            "loss": loss_total,
            **update,
            **summed,
            **timings,
        }

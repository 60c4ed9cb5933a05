"""Offline preference and divergence-estimation training on pairs (DPO, IPO, f-DPO, f-PO) or on unpaired
desirable/undesirable responses (FDO with its KLDO/BCO/HDO presets, KTO).

One step: take the step's pairs (or examples) in a seeded order, run the policy once over all their completions
(a pair's prompt runs once for both, see ``models.completion_forward``), sum token log-probabilities per
completion, take the reference log-probabilities (computed once for the whole dataset before training, or live
in the policy's pass), apply the objective, backward, clip, step. Unpaired objectives keep a small running state
(KLDO's average, BCO's shift) that is saved with each checkpoint. Each step's row also gives the seconds spent in
the forward and backward (a live reference included) and in the optimizer step.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import torch

from divalign import llama_fast, objectives
from divalign.data.order import EpochOrder
from divalign.data.preferences import Pair, Unpaired
from divalign.data.tokens import Ragged, fit
from divalign.models import SequenceBatch, completion_forward, completion_logprobs, set_training
from divalign.objectives import PairBatch, UnpairedBatch
from divalign.objectives.pairs import DPOOptions, FDPOOptions, FPOOptions, IPOOptions
from divalign.objectives.unpaired import FDOOptions, KTOOptions
from divalign.trainers.loop import RunOptions
from divalign.trainers.optim import Optimization, OptimizerOptions


@dataclass
class PreferenceConfig(RunOptions, OptimizerOptions):
    """Offline alignment on preference pairs (dpo, ipo, fdpo, fpo) or desirable/undesirable data (fdo, kto)."""

    model: str = ""
    """Folder of the policy (AutoModelForCausalLM and its tokenizer); also the frozen reference."""
    data: str = ""
    """Data file (JSONL, JSON, CSV, Parquet), or built-in: hh-rlhf:harmless-base, hh-rlhf:helpful-base, advbench."""
    eval_data: str = ""
    """Optional held-out file in the same format (or a built-in name); default: eval_fraction of data."""
    eval_fraction: float = 0.1
    """Share of data held out for evaluation when eval_data is empty (0: none)."""
    output_dir: str = "runs/preference"
    """Run folder: config, metrics.jsonl, checkpoints/ and the final model/."""
    objective: str = "dpo"
    """dpo, ipo, fdpo, fpo (pairs) or fdo, kto (unpaired; pairs are split into chosen/rejected)."""
    prompt_field: str = "prompt"
    """Field holding the prompt."""
    chosen_field: str = "chosen"
    """Field holding the preferred response (pair files)."""
    rejected_field: str = "rejected"
    """Field holding the dispreferred response (pair files)."""
    completion_field: str = "completion"
    """Field holding the response (unpaired files)."""
    label_field: str = "label"
    """Field holding desirable (true/1) or undesirable (false/0) (unpaired files)."""
    drop_identical_pairs: bool = False
    """Leave out pairs whose chosen and rejected are identical (with a warning) instead of stopping."""
    max_length: int = 256
    """Maximum tokens of prompt + response; prompts are cut from the left, responses from the right."""
    batch_size: int = 8
    """Pairs (or unpaired examples) per optimizer step."""
    micro_batch_size: int = 0
    """Pairs or examples per forward/backward (0: the whole batch)."""
    epochs: float = 1.0
    """Passes over the data (used when steps is 0)."""
    steps: int = 0
    """Optimizer steps (0: derived from epochs)."""
    learning_rate: float = 5e-6
    precompute_reference: bool = True
    """Compute the reference log-probabilities once before training instead of a reference forward per step."""
    eval_every: int = 0
    """Evaluate every this many steps (0: only at the end)."""
    seed: int = 0
    """Seed of data order and of the evaluation split."""
    fast_path: bool = True
    """Run Llama-family models through the lean functional forward."""
    compile: bool = False
    """Compile the lean forward with torch.compile (slow start, faster steps)."""
    dpo: DPOOptions = field(default_factory=DPOOptions)
    ipo: IPOOptions = field(default_factory=IPOOptions)
    fdpo: FDPOOptions = field(default_factory=FDPOOptions)
    fpo: FPOOptions = field(default_factory=FPOOptions)
    fdo: FDOOptions = field(default_factory=FDOOptions)
    kto: KTOOptions = field(default_factory=KTOOptions)

    @property
    def objective_options(self):
        return getattr(self, self.objective)


@dataclass
class Encoded:
    """Token ids of responses to prompts; ``group`` responses in a row share a prompt (2 for pairs)."""

    prompts: list[list[int]]  #: one per response
    responses: list[list[int]]
    group: int

    @functools.cached_property
    def _ragged(self) -> tuple[Ragged, Ragged]:
        return Ragged(self.prompts), Ragged(self.responses)

    def batch(self, rows: list[int], pad_id: int) -> SequenceBatch:
        prompts, responses = self._ragged
        index = torch.tensor(rows, dtype=torch.long)
        prompt_ids, prompt_mask = prompts.padded(index, pad_id, left=True)
        ids, mask = responses.padded(index, pad_id)
        return SequenceBatch(torch.cat([prompt_ids, ids], 1), torch.cat([prompt_mask, mask], 1), prompt_ids.shape[1])


def encode(tokenizer, prompts: list[str], responses: list[str], max_length: int, group: int) -> Encoded:
    """Token ids of each (prompt, response + end-of-sequence), cut to ``max_length`` by :func:`fit`.

    The ``group`` responses of a prompt keep the same (shortest needed) prompt cut, so they can share one prompt
    forward pass.
    """
    eos = tokenizer.eos_token_id
    p_ids = [tokenizer(p)["input_ids"] for p in prompts]
    r_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in responses]
    out_p, out_r = [], []
    for start in range(0, len(p_ids), group):
        rows = range(start, start + group)
        keep = min(len(fit(p_ids[i], r_ids[i], max_length)[0]) for i in rows)
        for i in rows:
            prompt = p_ids[i][len(p_ids[i]) - keep:]
            out_p.append(prompt)
            out_r.append(r_ids[i][: max_length - len(prompt)])
    return Encoded(out_p, out_r, group)


def sequence_logps(model, data: Encoded, rows: list[int], pad_id: int, fast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_t log π(y_t | x, y_<t), response lengths) for the given rows (whole groups)."""
    return batch_logps(model, data.batch(rows, pad_id), data.group, fast)


def batch_logps(model, batch: SequenceBatch, group: int, fast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_logps` of an assembled batch (one batch serves the policy and the reference)."""
    logp, _ = completion_logprobs(model, batch, group_size=group, fast=fast)
    return logp.sum(-1), batch.completion_mask.sum(-1).float()


def policy_and_reference_logps(policy, reference, batch: SequenceBatch, group: int, fast: bool):
    """(policy's sequence log-probabilities, response lengths, reference's sequence log-probabilities without
    gradient), in one pass where the models allow it (see :func:`divalign.models.completion_forward`)."""
    out = completion_forward(policy, batch, group_size=group, fast=fast, reference=reference)
    return out.logprobs.sum(-1), batch.completion_mask.sum(-1).float(), out.reference_logprobs.sum(-1)


class PreferenceTrainer:
    def __init__(
        self,
        model,
        tokenizer,
        config: PreferenceConfig,
        train: list[Pair] | list[Unpaired],
        reference,
        eval_items: list[Pair] | list[Unpaired] | None = None,
    ):
        self.policy, self.tokenizer, self.config = model, tokenizer, config
        self.objective = objectives.get(config.objective)
        self.options = config.objective_options
        self.paired = self.objective.family == "pairs"
        self.data = encode_dataset(tokenizer, train, config.max_length, self.paired)
        self.labels = None if self.paired else torch.tensor([u.desirable for u in train])
        self.units = len(train)  # pairs or examples
        self.order = EpochOrder(self.units, f"preference-{config.seed}")
        self.reference = reference
        if config.compile:
            llama_fast.enable_compile()
        self.ref_logps = None
        if config.precompute_reference:
            self.ref_logps = reference_logps(reference, self.data, tokenizer.pad_token_id, config.fast_path)
        self.total_steps = config.steps or max(1, math.ceil(config.epochs * self.units / config.batch_size))
        self.optimization = Optimization(model, config, self.total_steps)
        self.state: dict = {}
        self.eval_items = eval_items

    def state_dict(self, step: int) -> dict:
        return {"step": step, **self.optimization.state_dict(), "objective_state": self.state}

    def load_state_dict(self, state: dict) -> int:
        self.optimization.load_state_dict(state)
        self.state = state.get("objective_state", {})
        return int(state["step"])

    def _units(self, step: int) -> list[int]:
        """Indices of the pairs/examples of ``step``: consecutive items of seeded epoch permutations."""
        return self.order.take(step * self.config.batch_size, self.config.batch_size)

    def _rows(self, units: list[int]) -> list[int]:
        g = self.data.group
        return [u * g + j for u in units for j in range(g)]

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        cfg = self.config
        set_training(self.policy, True)
        units = self._units(step)
        micro = cfg.micro_batch_size or len(units)
        summed: dict[str, float] = {}
        loss_total = 0.0
        counts = self._counts(units)
        if self.config.objective == "kto" and len(units) > 1:
            counts.update(self._kto_reference_point(units))
        # forward_backward_s includes the live reference's forward, which runs in the policy's pass
        timings = {"forward_backward_s": 0.0}
        for start in range(0, len(units), micro):
            part = units[start : start + micro]
            rows = self._rows(part)
            begin = time.perf_counter()
            batch = self.data.batch(rows, self.tokenizer.pad_token_id)
            if self.ref_logps is None:
                logps, lengths, ref = policy_and_reference_logps(self.policy, self.reference, batch,
                                                                 self.data.group, cfg.fast_path)
            else:
                logps, lengths = batch_logps(self.policy, batch, self.data.group, cfg.fast_path)
                ref = self.ref_logps[rows]
            loss, metrics = self._loss(part, logps, lengths, ref, counts)
            loss.backward()
            loss_total += float(loss.item())
            timings["forward_backward_s"] += time.perf_counter() - begin
            for key, value in metrics.items():
                summed[key] = summed.get(key, 0.0) + value
        if not self.paired:
            self.state = self.options.next_state(self.state, summed)
        t = time.perf_counter()
        row = {"step": step + 1, "loss": loss_total, **self.optimization.step(), **summed}
        timings["optimizer_s"] = time.perf_counter() - t
        row.update(timings)
        if self.eval_items and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == self.total_steps):
            row.update(self.evaluate(self.eval_items))
        row["step_s"] = time.perf_counter() - t0
        return row

    @torch.no_grad()
    def evaluate(self, items: list[Pair] | list[Unpaired]) -> dict:
        """Held-out implicit-reward statistics with Δ = log π_θ − log π_ref summed over each response.

        Pairs: ``eval_accuracy`` (share of pairs with Δ_chosen > Δ_rejected) and the mean margin. Unpaired: the
        mean Δ of desirable and of undesirable responses and their gap.
        """
        pad, fast = self.tokenizer.pad_token_id, self.config.fast_path
        data = encode_dataset(self.tokenizer, items, self.config.max_length, self.paired)
        delta = reference_logps(self.policy, data, pad, fast) - reference_logps(self.reference, data, pad, fast)
        if self.paired:
            margin = delta[0::2] - delta[1::2]
            return {"eval_accuracy": float((margin > 0).float().mean()), "eval_margin": float(margin.mean())}
        labels = torch.tensor([u.desirable for u in items])
        good, bad = float(delta[labels].mean()), float(delta[~labels].mean())
        return {"eval_delta_desirable": good, "eval_delta_undesirable": bad, "eval_gap": good - bad}

    def _counts(self, units: list[int]) -> dict:
        if self.paired:
            return {"num_pairs": len(units)}
        labels = self.labels[units]
        return {"num_desirable": int(labels.sum()), "num_undesirable": int((~labels).sum())}

    def _loss(self, units, logps, lengths, ref, counts):
        if self.paired:
            batch = PairBatch(logps[0::2], logps[1::2], ref[0::2], ref[1::2], lengths[0::2], lengths[1::2], **counts)
            return self.objective.loss(batch, self.options)
        batch = UnpairedBatch(logps, ref, self.labels[units], **counts)
        return self.objective.loss(batch, self.options, self.state)

    def _kto_reference_point(self, units: list[int]) -> dict:
        """KTO's z₀ inputs for the whole step: each prompt with the *next* example's response (no gradient)."""
        shifted = Encoded(
            [self.data.prompts[u] for u in units], [self.data.responses[u] for u in units[1:] + units[:1]], 1
        )
        batch = shifted.batch(list(range(len(units))), self.tokenizer.pad_token_id)
        with torch.no_grad():
            kl_logps = batch_logps(self.policy, batch, 1, self.config.fast_path)[0]
            ref_kl = batch_logps(self.reference, batch, 1, self.config.fast_path)[0]
        return {"kl_logps": kl_logps, "ref_kl_logps": ref_kl}


def encode_dataset(tokenizer, items: list[Pair] | list[Unpaired], max_length: int, paired: bool) -> Encoded:
    if paired:
        prompts = [p.prompt for p in items for _ in range(2)]
        responses = [r for p in items for r in (p.chosen, p.rejected)]
        return encode(tokenizer, prompts, responses, max_length, group=2)
    return encode(tokenizer, [u.prompt for u in items], [u.completion for u in items], max_length, group=1)


@torch.no_grad()
def reference_logps(model, data: Encoded, pad_id: int, fast: bool, chunk: int = 64) -> torch.Tensor:
    """Sequence log-probabilities of every response under ``model``, computed once (the cached reference)."""
    was_training = model.training
    model.eval()
    out = []
    rows = list(range(len(data.responses)))
    step = max(data.group, chunk - chunk % data.group)
    for start in range(0, len(rows), step):
        out.append(sequence_logps(model, data, rows[start : start + step], pad_id, fast)[0])
    model.train(was_training)
    return torch.cat(out)

"""The GPU check: divalign's SFT, DPO and GRPO steps on a CUDA device in bf16, full fine-tuning and LoRA, on a
demo-sized and a Qwen2.5-0.5B-shaped random Llama, next to TRL's trainers on the same machine; and the Llama fast
path against the Hugging Face forward there (values, gradients, time), the evidence behind ``models.runtime``'s
decision to step aside on a GPU.

Shapes (random weights, a word-level ``tokenizers`` tokenizer that covers every id):

* ``demo``: hidden 128, MLP 512, 4 layers, 4 heads / 2 KV heads, 512-token vocabulary;
* ``qwen0.5b``: Qwen2.5-0.5B's sizes as a plain Llama (hidden 896, MLP 4864, 24 layers, 14 heads / 2 KV heads,
  151,936-token vocabulary, tied embeddings; no q/k/v biases, which the fast path does not read), 494M parameters.

Per shape and method (GRPO: 4 prompts × 8 completions, 64 new tokens; DPO: 8 pairs of 128 tokens; SFT: 8 rows of
256 tokens) it prints seconds per step (median after a warm-up step), tokens per second (tokens of the step's
batch, padding left out) and peak device memory, for divalign and TRL one after the other. Never a test: run it
on a GPU machine and record what it prints (BENCHMARKS.md).

    pip install -c constraints.txt -e '.[bench]'      # TRL for the comparison (optional: --no-trl)
    python benchmarks/gpu_check.py                     # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --shapes demo --steps 2   # the script itself, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time

import torch

SHAPES = {
    "demo": {"vocab": 512, "hidden_size": 128, "intermediate_size": 512, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
                 "tie_embeddings": False},
    "qwen0.5b": {"vocab": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_layers": 24, "num_heads": 14,
                     "num_kv_heads": 2, "tie_embeddings": True},
}
GROUP, PROMPTS, NEW_TOKENS, PROMPT_WORDS = 8, 4, 64, 32
PAIRS, PAIR_LENGTH, SFT_ROWS, SFT_LENGTH = 8, 128, 8, 256


def word_tokenizer(vocab: int):
    """A real fast tokenizer whose ``vocab`` ids are all words (``w4`` … ``w{vocab-1}``) after four specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, vocab)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def write_model(folder: str, shape: dict) -> str:
    from divalign.charlm import tiny_llama
    from divalign.models import save_model

    arch = {k: v for k, v in shape.items() if k != "vocab"}
    tokenizer = word_tokenizer(shape["vocab"])
    save_model(tiny_llama(tokenizer, max_positions=512, **arch), tokenizer, folder)
    return folder


def words(rng: random.Random, n: int, vocab: int) -> str:
    return " ".join(f"w{rng.randrange(4, vocab)}" for _ in range(n))


def even_share(text: str, answer=None) -> float:
    """A reward with variance over random completions: the share of words with an even id."""
    ids = [int(w[1:]) for w in text.split() if w[1:].isdigit()]
    return sum(i % 2 == 0 for i in ids) / max(1, len(ids))


class Device:
    def __init__(self, name: str):
        self.device = torch.device(name)

    def reset(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None


def fast_path_check(folder: str, dev: Device, dtype: torch.dtype, vocab: int) -> dict:
    """The Llama kernels against the Hugging Face forward on the device: log-probabilities and gradients of one
    batch, and the time of a forward and backward each."""
    from divalign.data.tokens import SequenceBatch
    from divalign.models import completion_logprobs, load_causal_lm
    from divalign.models.llama.weights import llama_params
    from divalign.models.runtime import ATTRIBUTE, Runtime
    from divalign.parallel import autocast

    model, _ = load_causal_lm(folder, device=dev.device)
    rng = random.Random(1)
    ids = torch.tensor([[rng.randrange(4, vocab) for _ in range(PROMPT_WORDS + NEW_TOKENS)] for _ in range(GROUP)],
                       device=dev.device)
    batch = SequenceBatch(ids, torch.ones_like(ids), PROMPT_WORDS)
    out = {}
    for name, runtime in (("hf", Runtime(None)), ("fast", Runtime(llama_params(model)))):
        setattr(model, ATTRIBUTE, runtime)  # deliberately past the decision: this is the check behind it
        try:
            times = []
            for _ in range(4):
                model.zero_grad(set_to_none=True)
                dev.sync()
                start = time.perf_counter()
                with autocast(dev.device, dtype):
                    logprobs, _ = completion_logprobs(model, batch)
                logprobs.sum().backward()
                dev.sync()
                times.append(time.perf_counter() - start)
            grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
            out[name] = {"logprobs": logprobs.detach().float(), "grads": grads, "s": statistics.median(times[1:])}
        except Exception as exc:  # noqa: BLE001 - a failure on the device is the finding to report
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    if "error" in out["fast"] or "error" in out["hf"]:
        return {k: v.get("error", "ran") for k, v in out.items()}
    hf, fast = out["hf"], out["fast"]
    return {"logprob_max_abs_diff": float((hf["logprobs"] - fast["logprobs"]).abs().max()),
            "grad_cosine": float(torch.nn.functional.cosine_similarity(hf["grads"], fast["grads"], dim=0)),
            "grad_norm_ratio": float(fast["grads"].norm() / hf["grads"].norm()),
            "hf_s": hf["s"], "fast_s": fast["s"], "fast_over_hf": fast["s"] / hf["s"]}


def divalign_runs(folder: str, dev: Device, dtype_name: str, steps: int, lora: bool, vocab: int) -> dict:
    """Seconds per step, tokens per second and peak memory of divalign's sft, dpo and grpo steps."""
    from divalign.config import build
    from divalign.data.preferences import Pair
    from divalign.data.prompts import DatasetPrompts, Example
    from divalign.data.sft import Demonstration, render_demonstrations
    from divalign.models import frozen_copy, load_causal_lm
    from divalign.models.adapters import AdapterOff, add_lora
    from divalign.parallel import World
    from divalign.rewards import PerSample
    from divalign.trainers.online import OnlineTrainer, RLConfig
    from divalign.trainers.preference import PreferenceConfig, PreferenceTrainer
    from divalign.trainers.sft import SFTConfig, SFTTrainer

    world = World(device=dev.device)
    rng = random.Random(0)
    common = {"model": folder, "steps": steps + 1, "learning_rate": 1e-5, "progress": False,
              "device": dev.device.type, "dtype": dtype_name}

    def policy_and_reference():
        policy, tokenizer = load_causal_lm(folder, device=dev.device)
        if lora:
            policy = add_lora(policy, 16, 32, 0.0)
            return policy, tokenizer, AdapterOff(policy)
        return policy, tokenizer, frozen_copy(policy)

    def timed(name, make, tokens_of):
        dev.reset()
        trainer = make()
        times, tokens = [], []
        for step in range(steps + 1):
            dev.sync()
            start = time.perf_counter()
            row = trainer.step(step)
            dev.sync()
            times.append(time.perf_counter() - start)
            tokens.append(tokens_of(row))
        seconds = statistics.median(times[1:])
        return name, {"s_per_step": seconds, "tokens_per_s": statistics.median(tokens[1:]) / seconds,
                      "peak_gib": dev.peak_gib()}

    def sft():
        policy, tokenizer, _ = policy_and_reference()
        items = [Demonstration(words(rng, 32, vocab), words(rng, SFT_LENGTH - 34, vocab)) for _ in range(64)]
        config = build(SFTConfig, {**common, "batch_size": SFT_ROWS, "max_length": SFT_LENGTH})
        return SFTTrainer(policy, tokenizer, render_demonstrations(tokenizer, items), config, world=world)

    def dpo():
        policy, tokenizer, reference = policy_and_reference()
        half = PAIR_LENGTH // 2
        pairs = [Pair(words(rng, half - 2, vocab), words(rng, half, vocab), words(rng, half, vocab))
                 for _ in range(64)]
        config = build(PreferenceConfig, {**common, "objective": "dpo", "batch_size": PAIRS,
                                          "max_length": PAIR_LENGTH})
        return PreferenceTrainer(policy, tokenizer, config, pairs, reference, world=world)

    def grpo():
        policy, tokenizer, reference = policy_and_reference()
        prompts = [Example(words(rng, PROMPT_WORDS - 1, vocab), "") for _ in range(64)]
        config = build(RLConfig, {**common, "objective": "grpo", "prompts_per_step": PROMPTS,
                                  "num_generations": GROUP, "max_new_tokens": NEW_TOKENS, "grpo": {"beta": 0.04}})
        return OnlineTrainer(config, policy, tokenizer, DatasetPrompts(prompts, seed=0),
                             PerSample(even_share, "even_share"), reference=reference, world=world)

    return dict([
        timed("sft", sft, lambda row: row["tokens"]),
        timed("dpo", dpo, lambda row: PAIRS * PAIR_LENGTH),
        timed("grpo", grpo, lambda row: PROMPTS * GROUP * (PROMPT_WORDS + row.get("completion_length", NEW_TOKENS))),
    ])


def trl_runs(folder: str, dev: Device, dtype_name: str, steps: int, lora: bool, vocab: int, work: str) -> dict:
    """The same three steps with TRL's trainers (its HF-generate path for GRPO), one after the other."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    rng = random.Random(0)
    quiet = {"use_cpu": dev.device.type == "cpu", "bf16": dtype_name == "bf16", "fp16": dtype_name == "fp16",
                 "report_to": "none", "save_strategy": "no", "logging_steps": 10**6, "disable_tqdm": True, "seed": 0,
                 "learning_rate": 1e-5, "max_steps": steps + 1, "output_dir": os.path.join(work, "trl")}
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM") if lora else None
    tokenizer = AutoTokenizer.from_pretrained(folder)

    class Times(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *args, **kwargs):
            dev.sync()
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            dev.sync()
            self.times.append(time.perf_counter() - self.start)

    def timed(name, make, tokens):
        dev.reset()
        times = Times()
        trainer = make()
        trainer.add_callback(times)
        trainer.train()
        seconds = statistics.median(times.times[1:])
        return name, {"s_per_step": seconds, "tokens_per_s": tokens / seconds, "peak_gib": dev.peak_gib()}

    def model():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    def sft():
        data = Dataset.from_dict({"prompt": [words(rng, 32, vocab) for _ in range(64)],
                                  "completion": [words(rng, SFT_LENGTH - 34, vocab) for _ in range(64)]})
        return SFTTrainer(model=model(), args=SFTConfig(per_device_train_batch_size=SFT_ROWS, max_length=SFT_LENGTH,
                                                        **quiet),
                          train_dataset=data, processing_class=tokenizer, peft_config=peft_config)

    def dpo():
        half = PAIR_LENGTH // 2
        data = Dataset.from_dict({"prompt": [words(rng, half - 2, vocab) for _ in range(64)],
                                  "chosen": [words(rng, half, vocab) for _ in range(64)],
                                  "rejected": [words(rng, half, vocab) for _ in range(64)]})
        return DPOTrainer(model=model(), args=DPOConfig(per_device_train_batch_size=PAIRS, max_length=PAIR_LENGTH,
                                                        beta=0.1, **quiet),
                          train_dataset=data, processing_class=tokenizer, peft_config=peft_config)

    def grpo():
        left = AutoTokenizer.from_pretrained(folder)
        left.padding_side = "left"
        data = Dataset.from_dict({"prompt": [words(rng, PROMPT_WORDS - 1, vocab) for _ in range(64)]})
        config = GRPOConfig(per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
                            max_completion_length=NEW_TOKENS, beta=0.04, loss_type="grpo", **quiet)
        return GRPOTrainer(model=model(), reward_funcs=lambda prompts, completions, **kw: [even_share(c) for c in
                                                                                           completions],
                           args=config, train_dataset=data, processing_class=left, peft_config=peft_config)

    return dict([timed("sft", sft, SFT_ROWS * SFT_LENGTH), timed("dpo", dpo, PAIRS * PAIR_LENGTH),
                 timed("grpo", grpo, PROMPTS * GROUP * (PROMPT_WORDS + NEW_TOKENS))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--shapes", default="demo,qwen0.5b")
    parser.add_argument("--steps", type=int, default=4, help="steps timed after one warm-up step")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: this torch sees no GPU (use --device cpu to check the script itself)")
    from divalign.parallel import DTYPES

    dev = Device(args.device)
    work = tempfile.mkdtemp(prefix="gpu-check-")
    result = {"benchmark": "gpu_check", "date": time.strftime("%Y-%m-%d"), "device": args.device,
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "dtype": args.dtype,
              "torch": torch.__version__, "shapes": {}}
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        folder = write_model(os.path.join(work, shape_name), shape)
        entry = {"fast_path_vs_hf": fast_path_check(folder, dev, DTYPES[args.dtype], shape["vocab"])}
        print(shape_name, "fast path vs HF:", json.dumps(entry["fast_path_vs_hf"]), flush=True)
        for lora in (False, True):
            setting = "lora" if lora else "full"
            entry[f"divalign_{setting}"] = divalign_runs(folder, dev, args.dtype, args.steps, lora, shape["vocab"])
            print(shape_name, f"divalign {setting}:", json.dumps(entry[f"divalign_{setting}"]), flush=True)
            if not args.no_trl:
                entry[f"trl_{setting}"] = trl_runs(folder, dev, args.dtype, args.steps, lora, shape["vocab"], work)
                print(shape_name, f"TRL {setting}:", json.dumps(entry[f"trl_{setting}"]), flush=True)
        result["shapes"][shape_name] = entry
    print(json.dumps(result))
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

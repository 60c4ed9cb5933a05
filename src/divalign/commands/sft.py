"""``divalign sft``: supervised fine-tuning of a model folder on prompt/completion or chat data."""

from __future__ import annotations

from divalign.commands.common import non_negative, positive, prepare_run, run_training
from divalign.data.sft import read_sft, render
from divalign.errors import UserError
from divalign.models import load_causal_lm
from divalign.trainers.sft import SFTConfig, SFTTrainer


def run(config: SFTConfig) -> list[dict]:
    if not config.model:
        raise UserError("no model: give --model FOLDER (a Hugging Face causal-LM folder)")
    if not config.data:
        raise UserError("no data: give --data FILE (prompt/completion or chat messages)")
    positive(config, "max_length", "batch_size")
    non_negative(config, "micro_batch_size", "steps")
    fields = (config.prompt_field, config.completion_field, config.messages_field)
    items = read_sft(config.data, *fields)
    eval_items = read_sft(config.eval_data, *fields) if config.eval_data else None
    run = prepare_run(config)
    model, tokenizer = load_causal_lm(run.model_path(config.model), trust_remote_code=config.trust_remote_code)
    for item in items[:1] + (eval_items or [])[:1]:
        render(tokenizer, item)  # a chat dataset meeting a tokenizer without a template fails here, before writing
    trainer = SFTTrainer(model, tokenizer, items, config, eval_items)
    return run_training(trainer, run, config, trainer.total_steps, ("loss", "eval_loss"))

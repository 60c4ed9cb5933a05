"""``divalign sft``: supervised fine-tuning of a model folder on prompt-completion data, plain text or
conversations."""

from __future__ import annotations

from divalign.commands.common import non_negative, positive, prepare_run, run_training, trained_model
from divalign.data.sft import read_sft, render_demonstrations
from divalign.errors import UserError
from divalign.models import check_causal_lm_folder, load_causal_lm, load_tokenizer
from divalign.trainers.sft import SFTConfig, SFTTrainer


def run(config: SFTConfig) -> list[dict]:
    if not config.model:
        raise UserError("no model: give --model FOLDER (a Hugging Face causal-LM folder)")
    if not config.data:
        raise UserError("no data: give --data FILE (prompt/completion, text or chat messages)")
    positive(config, "max_length", "batch_size")
    non_negative(config, "micro_batch_size", "steps")
    fields = (config.prompt_field, config.completion_field, config.messages_field, config.text_field)
    items = read_sft(config.data, *fields)
    eval_items = read_sft(config.eval_data, *fields) if config.eval_data else None
    check_causal_lm_folder(config.model, config.trust_remote_code)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    rendered = render_demonstrations(tokenizer, items)  # every row, so a template failing on row 900 fails here
    eval_rendered = render_demonstrations(tokenizer, eval_items) if eval_items else None
    run = prepare_run(config)
    base, tokenizer = load_causal_lm(run.base_path(config), trust_remote_code=config.trust_remote_code)
    model = trained_model(base, config, run)
    trainer = SFTTrainer(model, tokenizer, rendered, config, eval_rendered, run.world)
    return run_training(trainer, run, config, trainer.total_steps, ("loss", "eval_loss"))

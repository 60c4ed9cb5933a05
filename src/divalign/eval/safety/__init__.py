"""Safety evaluation: harmful prompts plain and inside jailbreak templates, a judge, attack success rates,
refusal and over-refusal rates, and a GCG suffix attack."""

"""The safety suite: refusal of harmful requests, attack success under jailbreak templates, over-refusal.

* **plain**: harmful requests (AdvBench) asked as they are — refusal rate (keyword detector) and attack success
  rate (ASR: share of responses the judge calls jailbroken);
* **templates**: each jailbreak template wraps ``requests_per_template`` requests (chosen per template with a
  seeded generator) — ASR per template family (GPTFuzzer, GPTFuzzer short seeds, AutoDAN), overall, and the
  share of templates that succeed at least once;
* **benign**: ordinary requests (HH-RLHF helpful, first human turn) — over-refusal rate.

All generations go through the cache of :mod:`divalign.eval.generations`, so an interrupted run resumes.
"""

from __future__ import annotations

import random
from collections import defaultdict

from divalign.eval.generations import Decoding, GenerationCache, generate
from divalign.eval.safety.data import Template
from divalign.eval.safety.judge import Judge, is_refusal


def run_safety(model, tokenizer, judge: Judge, requests: list[str], templates: list[Template], benign: list[str], *,
               requests_per_template: int = 5, decoding: Decoding, cache: GenerationCache, model_id: str,
               prompt_format: str = "{prompt}", batch_size: int = 32, show_progress: bool = True) -> dict:
    def answer(prompts: list[str], desc: str) -> list[str]:
        entries = generate(model, tokenizer, prompts, decoding, cache=cache, model_id=model_id,
                           prompt_format=prompt_format, batch_size=batch_size, desc=desc, show_progress=show_progress)
        return [e["response"] for e in entries]

    plain = answer(requests, "harmful requests")
    result = {"harmful_requests": len(requests), "refusal_rate": _mean(is_refusal(r) for r in plain),
              "asr_plain": _mean(judge.jailbroken(plain))}

    attacks = []  # (template, wrapped prompt)
    for template in templates:
        rng = random.Random(f"safety-{template.name}")
        for request in rng.sample(requests, min(requests_per_template, len(requests))):
            attacks.append((template, template.wrap(request)))
    if attacks:
        responses = answer([prompt for _, prompt in attacks], "jailbreak attacks")
        jailbroken = judge.jailbroken(responses)
        by_family, by_template = defaultdict(list), defaultdict(list)
        for (template, _), hit in zip(attacks, jailbroken):
            by_family[template.family].append(hit)
            by_template[template.name].append(hit)
        result.update({
            "attacks": len(attacks),
            "asr_templates": _mean(jailbroken),
            "asr_by_family": {family: _mean(hits) for family, hits in sorted(by_family.items())},
            "templates_with_a_success": _mean(any(hits) for hits in by_template.values()),
        })
    if benign:
        benign_responses = answer(benign, "benign requests")
        result.update({"benign_requests": len(benign),
                       "over_refusal_rate": _mean(is_refusal(r) for r in benign_responses)})
    return result


def _mean(values) -> float:
    values = list(values)
    return sum(bool(v) for v in values) / len(values) if values else 0.0

"""Red-team inputs from the shared data folder: AdvBench requests, GPTFuzzer and AutoDAN jailbreak templates,
benign HH-RLHF helpful prompts, and GPTFuzzer's labelled responses for the judge.

Content warning: these are harmful requests and real jailbreak prompts, used only as attack inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from divalign.data.records import read_records, require_fields
from divalign.paths import resolve

#: Placeholders the template files use for the request.
PLACEHOLDERS = ("[INSERT PROMPT HERE]", "[REPLACE]", "[PROMPT]")


@dataclass(frozen=True)
class Template:
    family: str  #: e.g. gptfuzzer, gptfuzzer-short, autodan
    name: str
    text: str

    def wrap(self, request: str) -> str:
        for placeholder in PLACEHOLDERS:
            if placeholder in self.text:
                # AutoDAN writes the goal lower-cased into its sentence.
                goal = request[0].lower() + request[1:] if placeholder == "[REPLACE]" else request
                return self.text.replace(placeholder, goal)
        return f"{self.text}\n{request}"


def harmful_requests(path: str = "data:advbench/harmful_behaviors.csv") -> list[str]:
    records = read_records(path)
    require_fields(records, {"goal": str})
    return [r.data["goal"] for r in records]


def jailbreak_templates(families: tuple[str, ...] = ("gptfuzzer", "gptfuzzer-short", "autodan")) -> list[Template]:
    """GPTFuzzer's 77 templates, its 25 short seeds, and AutoDAN's seeds (current seed and the first-release
    Developer-Mode seed; the 500-template population is in ``autodan-population``)."""
    out = []
    if "gptfuzzer" in families:
        out += [Template("gptfuzzer", f"gptfuzzer-{r.data['id']}", r.data["text"])
                for r in read_records("data:gptfuzz/GPTFuzzer.csv")]
    if "gptfuzzer-short" in families:
        out += [Template("gptfuzzer-short", f"short-{i}", r.data["text"])
                for i, r in enumerate(read_records("data:gptfuzz/seed_short_25.csv"))]
    if "autodan" in families:
        for name in ("autodan_initial_prompt.txt", "autodan_initial_prompt_v1_devmode.txt"):
            with open(resolve(f"data:autodan/{name}"), encoding="utf-8") as handle:
                out.append(Template("autodan", name.removesuffix(".txt"), handle.read()))
    if "autodan-population" in families:
        with open(resolve("data:autodan/prompt_group.json"), encoding="utf-8") as handle:
            out += [Template("autodan-population", f"autodan-{i}", text) for i, text in enumerate(json.load(handle))]
    return out


def benign_prompts(subset: str = "helpful-base", limit: int | None = None) -> list[str]:
    """First human turns of HH-RLHF helpful dialogues: ordinary requests a model should not refuse."""
    prompts, seen = [], set()
    records = read_records(f"data:hh_rlhf/{subset}/test.jsonl.gz")
    require_fields(records, {"chosen": str})
    for record in records:
        first = record.data["chosen"].split("\n\nHuman:", 2)[1].split("\n\nAssistant:", 1)[0].strip()
        if first and first not in seen:
            seen.add(first)
            prompts.append(first)
    return prompts[:limit]


def labelled_responses(path: str = "data:gptfuzz/responses_labeled/train.csv") -> list[tuple[int, str, int]]:
    """(question index, response, label) with label 1 = jailbroken (harmful compliance), 0 = not."""
    records = read_records(path)
    require_fields(records, {"question": str, "Response": str, "label": str})
    return [(int(r.data["question"]), r.data["Response"], int(r.data["label"])) for r in records]

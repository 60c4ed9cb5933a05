#!/usr/bin/env bash
# The feedback loop end to end on the real TinyStories stories260K model, on CPU, in about a minute:
# people's labels and a judge's on the same pairs -> a reward model -> f-HAL -> an A/B study of the result against
# the start -> Constitutional AI data -> SFT on it. Every file one step writes is what the next step reads.
# On a 260K-parameter model the stories are poor; the point is that every step runs and every file flows.
#
#   bash examples/feedback_loop.sh [OUT]        (OUT defaults to runs/feedback; it must not exist yet)
set -euo pipefail
OUT=${1:-runs/feedback}
EX=$(cd "$(dirname "$0")" && pwd)
DIVALIGN=${DIVALIGN:-divalign}
PYTHON=${PYTHON:-python}
MODEL="$OUT/stories260K"
PROMPTS="$EX/story_prompts.jsonl"
if [ -e "$OUT" ]; then echo "$OUT already exists; give another folder" >&2; exit 2; fi
mkdir -p "$OUT"

echo "== 0. the real stories260K model as a Hugging Face folder"
"$PYTHON" -m divalign.convert.llama2c data:tinyllamas_stories260K/stories260K.bin \
    data:tinyllamas_stories260K/tok512.bin "$MODEL" >/dev/null

echo "== 1. people's labels: examples/feedback/labels.jsonl was labelled by hand on the labelling page"
# The pairs are two sampled continuations of each story opening, made with
#   divalign label --model-a MODEL --prompts examples/story_prompts.jsonl --max-new-tokens 48 --pairs PAIRS ...
# To label them yourself (opens the page in your browser):
#   divalign label --pairs examples/feedback/pairs.jsonl --output "$OUT/labels.jsonl"
cp "$EX/feedback/labels.jsonl" "$OUT/labels.jsonl"

echo "== 2. the same pairs labelled by a judge model (RLAIF, both orders): agreement with people, position bias"
"$DIVALIGN" label --pairs "$EX/feedback/pairs.jsonl" --output "$OUT/labels.jsonl" --judge "$MODEL" --no-progress

echo "== 3. a reward model on people's labels (ties and 'both bad' are left out)"
"$DIVALIGN" rm --model "$MODEL" --data "$EX/feedback/labels.jsonl" --output-dir "$OUT/rm" --steps 60 \
    --batch-size 8 --learning-rate 1e-3 --no-progress 2>/dev/null

echo "== 4. f-HAL: the reward model online, people's pairs as its off-policy part"
"$DIVALIGN" rl --objective fhal --model "$MODEL" --prompts "$PROMPTS" --reward "rm:$OUT/rm/model" \
    --preference-data "$EX/feedback/labels.jsonl" --steps 40 --prompts-per-step 8 --num-generations 4 \
    --max-new-tokens 48 --learning-rate 5e-5 --output-dir "$OUT/fhal" --no-progress 2>/dev/null

echo "== 5. A/B study, f-HAL against the start: pairs of greedy stories, judged in both orders"
"$DIVALIGN" label --model-a "$OUT/fhal/model" --model-b "$MODEL" --prompts "$PROMPTS" --max-new-tokens 48 \
    --output "$OUT/ab.jsonl" --judge "$MODEL" --no-progress

echo "== 6. the same study judged by the reward model (divalign eval's win rate)"
"$DIVALIGN" eval --model "$OUT/fhal/model" --model-b "$MODEL" --judge-rm "$OUT/rm/model" --prompts "$PROMPTS" \
    --max-new-tokens 48 --output-dir "$OUT/eval" --no-progress >/dev/null
"$PYTHON" -c "import json, sys; w = json.load(open(sys.argv[1]))['win_rate']; print(f\"reward-model win rate of \
f-HAL over the start: {w['win_rate']:.3f} (95 % Wilson {w['win_rate_ci95'][0]:.3f}-{w['win_rate_ci95'][1]:.3f}), \
{w['wins']} wins, {w['ties']} ties, {w['losses']} losses\")" "$OUT/eval/results.json"

echo "== 7. Constitutional AI: response, critique and revision per opening; SFT on the revisions"
"$DIVALIGN" constitutional --model "$MODEL" --prompts "$PROMPTS" --output-dir "$OUT/constitutional" \
    --max-new-tokens 48 --no-progress
"$DIVALIGN" sft --model "$MODEL" --data "$OUT/constitutional/sft.jsonl" --output-dir "$OUT/sft-cai" --steps 20 \
    --batch-size 8 --no-progress 2>/dev/null
echo "wrote $OUT/sft-cai/model"

echo
echo "To judge the A/B study yourself, label its pairs on the page, then read the summary:"
echo "  $DIVALIGN label --pairs $OUT/ab.pairs.jsonl --output $OUT/ab.jsonl"
echo "  $DIVALIGN label --pairs $OUT/ab.pairs.jsonl --output $OUT/ab.jsonl --summary"

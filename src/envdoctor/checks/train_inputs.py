"""`--config`: are the datasets readable text that make at least one optimizer step, and are the base
model's files on this machine? The same rules the runner applies (its corpus.py and basemodel.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from envdoctor.model import Remedy, Result, fail, ok, skip, warn
from envdoctor.registry import check

if TYPE_CHECKING:  # annotations only: the facts' modules load when their checks run
    from envdoctor.facts.train_inputs import BaseModelFacts, DatasetFacts


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB" if n >= 1e3 else f"{n} bytes"


@check("config.datasets", "Training data", "Config",
       "every dataset file is UTF-8 text or jsonl rows with a text field, and there is enough for one step",
       needs=("datasets",), option="config")
def datasets(datasets: DatasetFacts) -> Result:
    d = datasets
    if d.entries is None:
        return skip("datasets is not a list of {path: …} (see config.valid)")
    if d.problems:
        return fail(f"{len(d.problems)} problem(s) in the datasets", d.problems + d.warnings,
                    Remedy(text="Fix the files named above (paths are relative to the config's folder)."))
    size = f"{len(d.files)} file(s), {d.documents} document(s), {_size(d.text_bytes)} of text"
    if d.max_train_chunks is not None and d.max_train_chunks < d.needed_chunks:
        return fail(f"too little text for one optimizer step: {size}", [
            f"at most {d.max_train_chunks} training chunk(s) of ≤{d.sequence_len} tokens, even counting a token "
            f"a byte; one optimizer step needs {d.needed_chunks} (micro_batch_size × gradient_accumulation_steps)"],
            Remedy(text="Add text, or lower micro_batch_size, gradient_accumulation_steps, sequence_len or "
                        "val_set_size."))
    if d.warnings:
        return warn(size + f"; {len(d.warnings)} warning(s)", d.warnings + d.files[:20])
    return ok(size, d.files[:20])


@check("config.base_model", "Base model files", "Config",
       "the base model is a local folder or in the Hugging Face cache, with its weights and tokenizer files",
       needs=("base_model",), option="config")
def base_model(base_model: BaseModelFacts) -> Result:
    b = base_model
    if not (b.needs_weights or b.needs_tokenizer):
        return skip("built from model_config with a tokenizer learned from the corpus: no base files to read")
    if not isinstance(b.name, str):
        return skip("no base_model (see config.valid)")
    if b.problems:
        if b.kind == "folder":
            return fail(f"base model folder {b.path}: files missing", b.problems,
                        Remedy(text="Copy the missing files in from the model's source (its Hugging Face repository)."))
        return fail(f"base model {b.name}: not on this machine", b.problems,
                    Remedy(text=f"hf download {b.name}  (gated models: `hf auth login` first), or "
                                "envdoctor train CONFIG --download to let the run fetch it") if b.kind == "not cached"
                    else Remedy(text="Name an existing folder, relative to the config's folder, or an org/name id."))
    if b.kind == "not cached":
        return warn(f"{b.name} is not in the local Hugging Face cache: the run will download it (--download)",
                    [f"looked in {b.path}"])
    what = " and ".join(w for w, need in (("weights", b.needs_weights), ("tokenizer", b.needs_tokenizer)) if need)
    return ok(f"{b.name}: {what} in {b.path}")

"""Hugging Face checkpoints both ways.

- `export_model` (`xstilts export-model`): a trained xstilts model folder (a study node, a run's phase) becomes a
  standard Hugging Face directory: config.json, model.safetensors, the tokenizer and a model card. A head that a
  transformers class computes exactly becomes that class: a classification head with CLS pooling
  `...ForSequenceClassification` (BERT: the pooler's dense + tanh is the head's dense layer; RoBERTa/XLM-R: their
  classification head has the same layers), span QA `...ForQuestionAnswering`, token tagging
  `...ForTokenClassification`; the export is checked to give the xstilts model's logits. Any other head (mean
  pooling, multiple choice, masked LM, an architecture without such a class) is exported as the encoder alone
  (`AutoModel`) plus `xstilts_head.safetensors` and `xstilts_head.json`, which `load_exported` reads.
- `load_imported` (`xstilts evaluate` on such a directory): a Hugging Face model with its own head, scored as an
  xstilts head of the task's type, its outputs mapped onto the task's labels by name (`label_order`).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import (AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer, PretrainedConfig, PreTrainedModel)
from transformers.initialization import no_init_weights

from xstilts import __version__
from xstilts.embedded_model import resolve_model
from xstilts.errors import XstiltsError
from xstilts.manifest import file_sha256, read_json, write_json
from xstilts.model import HEADS_FILE, POOLINGS, WEIGHTS_FILE, HeadSpec, MultiHeadModel, load_encoder, load_trained, \
    load_weights, read_heads
from xstilts.names import task_name
from xstilts.task_types import task_type
from xstilts.tasks.spec import TaskSpec

EXPORT_MARKER = "xstilts_export.json"  # written last: what was exported from where (the same export is kept)
HEAD_WEIGHTS = "xstilts_head.safetensors"  # an export whose head no transformers class computes
HEAD_SETTINGS = "xstilts_head.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "vocab.txt", "vocab.json",
                   "merges.txt")
AUTO_CLASSES = {"classification": AutoModelForSequenceClassification, "span_qa": AutoModelForQuestionAnswering,
                "token_classification": AutoModelForTokenClassification}
ARCHITECTURE_TYPES = {"ForSequenceClassification": "classification", "ForQuestionAnswering": "span_qa",
                      "ForTokenClassification": "token_classification"}
# Classes whose head is xstilts' classification head with CLS pooling (first token -> dense -> tanh -> out_proj,
# dropout aside): the xstilts head's layer -> theirs.
SEQUENCE_HEADS = {
    "BertForSequenceClassification": {"dense": "bert.pooler.dense", "out_proj": "classifier"},
    "RobertaForSequenceClassification": {"dense": "classifier.dense", "out_proj": "classifier.out_proj"},
    "XLMRobertaForSequenceClassification": {"dense": "classifier.dense", "out_proj": "classifier.out_proj"},
}
GENERIC_LABEL = re.compile(r"LABEL_\d+")
_WARNED: set[str] = set()


def export_model(model_dir: Path, output: Path, head: str | None = None, base_model: str | None = None) -> str:
    """Write the trained model folder `model_dir` (its head `head`, needed where it has several) as a Hugging
    Face directory `output` (new, empty, or holding this same export, which is kept); returns a line to print."""
    from xstilts.hf_card import model_card, provenance

    name = pick_head(read_heads(model_dir), head, model_dir)
    facts = provenance(model_dir)
    base = _base_model(facts.get("model"), base_model, model_dir)
    marker = {"source": str(model_dir.resolve()), "head": name, "base_model": base}
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not _holds_export(output, marker, model_dir / WEIGHTS_FILE):
            raise XstiltsError(f"{output}: exists and is not an empty folder; give a new or empty --output")
        return f"{output}: already holds this export of {model_dir} (head {name!r})"
    marker["weights_sha256"] = file_sha256(model_dir / WEIGHTS_FILE)
    model = load_trained(resolve_model(base), model_dir).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # a folder as any other, not mkdtemp's private one
    try:
        exported = _write_exact(model, name, staging) or _write_encoder_and_head(model, name, staging)
        _save_tokenizer(resolve_model(base), staging)
        card = model_card(facts, model, name, exported, not (staging / HEAD_SETTINGS).is_file(), marker)
        (staging / "README.md").write_text(card, encoding="utf-8")
        write_json(staging / EXPORT_MARKER, {**marker, "exported_as": exported, "xstilts": __version__})
        if output.is_dir():
            output.rmdir()
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"{output}: head {name!r} ({model.specs[name].type}) exported as {exported}"


def _save_tokenizer(base: str, directory: Path) -> None:
    """The base model's tokenizer in `directory`: its files copied from its folder, or for a Hub name loaded and
    saved."""
    found = [Path(base) / name for name in TOKENIZER_FILES if (Path(base) / name).is_file()]
    for path in found:
        shutil.copyfile(path, directory / path.name)
    if not found:
        AutoTokenizer.from_pretrained(base).save_pretrained(str(directory))


def pick_head(heads: dict[str, HeadSpec], wanted: str | None, where: Path) -> str:
    """The head to export: `wanted`, or the only one; an unknown name or a missing choice is one line."""
    if wanted is None:
        if len(heads) == 1:
            return next(iter(heads))
        raise XstiltsError(f"{where}: the model has {len(heads)} heads ({', '.join(heads)}); pick one with --head")
    if wanted not in heads:
        import difflib

        close = difflib.get_close_matches(wanted, list(heads), n=1)
        raise XstiltsError(f"{where}: no head {wanted!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                                            f" (its heads: {', '.join(heads)})"))
    return wanted


def _base_model(recorded: str | None, given: str | None, where: Path) -> str:
    """The base model the folder was trained from: as its study or run records it, else `given`, else the
    embedded one; `given` against another recorded one is one line."""
    if recorded and given and resolve_model(given) != resolve_model(recorded):
        raise XstiltsError(f"{where}: was trained from {recorded!r}, not --model {given!r}; leave --model out")
    return recorded or given or "embedded"


def _holds_export(output: Path, marker: dict, weights: Path) -> bool:
    """Whether the folder `output` holds a finished export of the same source, head and base model and of the
    same `weights` (hashed only when the rest agrees)."""
    path = output / EXPORT_MARKER
    if not output.is_dir() or not path.is_file():
        return False
    held = read_json(path, f"delete {output} to export again")
    return all(held.get(key) == value for key, value in marker.items()) and \
        held.get("weights_sha256") == file_sha256(weights)


def _write_exact(model: MultiHeadModel, name: str, directory: Path) -> str | None:
    """Save the head as the transformers class that computes it exactly; None where no class does."""
    spec = model.specs[name]
    auto = AUTO_CLASSES.get(spec.type)
    if auto is None or (spec.type == "classification" and model.pooling != "cls"):
        return None
    config = copy.deepcopy(model.encoder.config)
    config.architectures = None
    if spec.labels:
        config.id2label = dict(enumerate(spec.labels))
        config.label2id = {label: index for index, label in enumerate(spec.labels)}
    else:
        config.num_labels = 2  # span QA: a start and an end score
    try:
        with no_init_weights():  # every weight is set below
            hf = auto.from_config(config)
    except ValueError:  # no such class for this architecture
        return None
    layers = _head_layers(hf, spec.type)
    if layers is None:
        return None
    state = {f"{hf.base_model_prefix}.{key}": value for key, value in model.encoder.state_dict().items()}
    for ours, theirs in layers.items():
        state |= {f"{theirs}.{key}": value for key, value in model.heads[name].get_submodule(ours).state_dict().items()}
    missing, _ = hf.load_state_dict(state, strict=False)  # the encoder's unused pooler has no place in some classes
    if missing:
        raise XstiltsError(f"{type(hf).__name__}: the model's weights leave {missing[:3]} unset; cannot export")
    _check_same(model, name, hf.eval())
    hf.save_pretrained(str(directory))
    return type(hf).__name__


def _head_layers(hf: PreTrainedModel, kind: str) -> dict[str, str] | None:
    """Where the xstilts head's layers go in `hf`, or None where its head is not the xstilts one: a known
    sequence classification class; for QA and tagging, a class whose head is one linear layer."""
    if kind == "classification":
        return SEQUENCE_HEADS.get(type(hf).__name__)
    own = {key.rsplit(".", 1)[0] for key in hf.state_dict() if not key.startswith(f"{hf.base_model_prefix}.")}
    if len(own) != 1 or not isinstance(hf.get_submodule(next(iter(own))), nn.Linear):
        return None
    return {"out_proj": own.pop()}


def _check_same(model: MultiHeadModel, name: str, hf: PreTrainedModel) -> None:
    """The export's logits are the xstilts model's on a short input (fp32), or the export is refused."""
    input_ids = torch.arange(3, 12)[None]
    mask = torch.ones_like(input_ids)
    with torch.inference_mode():
        ours = model(name, input_ids, mask).float()
        theirs = hf_logits(hf(input_ids=input_ids, attention_mask=mask), model.specs[name].type).float()
    gap = float((ours - theirs).abs().max())
    if gap > 1e-4 * max(1.0, float(ours.abs().max())):
        raise XstiltsError(f"{type(hf).__name__}: the export's logits differ from the model's by {gap:.3g}; "
                           "cannot export it as this class")


def hf_logits(output: object, kind: str) -> torch.Tensor:
    """A transformers head's output as the xstilts head of type `kind` gives it (span QA: start and end scores
    stacked on the last axis)."""
    if kind == "span_qa":
        return torch.stack((output.start_logits, output.end_logits), dim=-1)
    return output.logits


def _write_encoder_and_head(model: MultiHeadModel, name: str, directory: Path) -> str:
    """Save the encoder (`AutoModel`) and the head's weights and settings beside it (see `load_exported`)."""
    spec = model.specs[name]
    model.encoder.save_pretrained(str(directory))
    save_file({key: value.detach().contiguous() for key, value in model.heads[name].state_dict().items()},
              str(directory / HEAD_WEIGHTS))
    write_json(directory / HEAD_SETTINGS, {"head": name, "type": spec.type, "labels": list(spec.labels),
                                           "pooling": model.pooling})
    return f"{type(model.encoder).__name__} + {HEAD_WEIGHTS}"


def _head_settings(directory: Path) -> tuple[str, HeadSpec, str]:
    """An export's xstilts_head.json: the head's name (a module's: no '.', no path), its type and labels, its
    pooling; a damaged file is one line."""
    path = directory / HEAD_SETTINGS
    settings = read_json(path, "export the model again")
    name, kind, labels, pooling = (settings.get(key) for key in ("head", "type", "labels", "pooling"))
    try:
        task_name(name)
        task_type(kind)
        valid = isinstance(labels, list) and all(isinstance(label, str) for label in labels) and pooling in POOLINGS
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise XstiltsError(f"{path}: not a head's name, task type, labels and pooling; export the model again")
    return name, HeadSpec(kind, tuple(labels)), pooling


def load_exported(directory: Path | str) -> MultiHeadModel:
    """An export written as encoder + xstilts_head.safetensors, as an xstilts model with its one head: call it
    as `model(name, input_ids, attention_mask)` for the head's logits, `name` being `next(iter(model.specs))`."""
    directory = Path(directory)
    name, spec, pooling = _head_settings(directory)
    model = MultiHeadModel(load_encoder(str(directory)), {name: spec}, pooling=pooling)
    weights = load_weights(directory / HEAD_WEIGHTS, "export the model again", "head weights")
    try:
        model.heads[name].load_state_dict(weights)
    except RuntimeError as error:
        problem = " ".join(str(error).split("\n", 1)[-1].split())[:200]
        raise XstiltsError(f"{directory / HEAD_WEIGHTS}: does not fit the {spec.type} head ({problem})") from None
    return model.eval()


def is_hf_checkpoint(directory: Path) -> bool:
    """Whether `directory` is a Hugging Face model folder (config.json) rather than an xstilts one (heads.json)."""
    return (directory / "config.json").is_file() and not (directory / HEADS_FILE).is_file()


def imported_head(directory: Path, spec: TaskSpec) -> tuple[str, list[int] | None]:
    """The head of a Hugging Face folder that scores `spec`: its name (the model's class, or an xstilts export's
    head) and per task label the model output that scores it (None for span QA); a head of another type, or
    labels that do not map, is one line."""
    if (directory / HEAD_SETTINGS).is_file():
        name, head, _ = _head_settings(directory)
        kind, names = head.type, list(head.labels)
    else:
        config = _config(directory)
        name = (config.architectures or ["no architecture"])[0]
        kind = next((kind for suffix, kind in ARCHITECTURE_TYPES.items() if name.endswith(suffix)), None)
        if kind is None:
            raise XstiltsError(f"{directory}: a {name} has no head xstilts scores (...ForSequenceClassification, "
                               "...ForQuestionAnswering or ...ForTokenClassification); an encoder alone is scored "
                               "only by retrieval tasks")
        names = [str(config.id2label.get(index, f"LABEL_{index}")) for index in range(config.num_labels)]
    if kind != spec.type:
        raise XstiltsError(f"{directory}: its head {name} is {kind}; task {spec.name!r} is {spec.type}")
    return name, label_order(names, spec.labels, f"{directory}: {name}") if spec.labels else None


def _config(directory: Path) -> PretrainedConfig:
    """A folder's config.json as transformers reads it; one line where it cannot."""
    try:
        return AutoConfig.from_pretrained(str(directory))
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise XstiltsError(f"{directory / 'config.json'}: not a Hugging Face model config ({first})") from None


def label_order(names: list[str], labels: list[str], where: str) -> list[int]:
    """Per task label, the index of the model output that scores it, matched by name (exactly, else ignoring
    case). Generic names (LABEL_0, LABEL_1, ..., what transformers writes when no id2label was given) map only
    when they are exactly as many as the task's labels, then in the task's order, with a warning. Otherwise,
    one line naming the task's labels the model lacks and its labels the task lacks."""
    if names == [f"LABEL_{index}" for index in range(len(labels))]:
        if where not in _WARNED:  # once per model, not at every load
            _WARNED.add(where)
            print(f"xstilts: warning: {where}: generic labels {names[0]}..{names[-1]}; taken as the task's labels "
                  f"in its order ({', '.join(labels)})", file=sys.stderr)
        return list(range(len(labels)))
    if all(GENERIC_LABEL.fullmatch(name) for name in names):
        raise XstiltsError(f"{where}: {len(names)} generic labels (LABEL_0...) cannot stand for the task's "
                           f"{len(labels)} ({', '.join(labels)}); set id2label in its config.json")
    for key in (str, str.casefold):
        found = {key(name): index for index, name in enumerate(names)}
        if len(found) == len(names) == len(labels) and all(key(label) in found for label in labels):
            return [found[key(label)] for label in labels]
    folded = {name.casefold() for name in names}
    missing = [label for label in labels if label.casefold() not in folded]
    extra = [name for name in names if name.casefold() not in {label.casefold() for label in labels}]
    raise XstiltsError(f"{where}: its labels ({', '.join(names)}) do not map onto the task's: missing "
                       f"{', '.join(missing) or 'none'}" + (f"; not the task's: {', '.join(extra)}" if extra else ""))


class ImportedModel(nn.Module):
    """A Hugging Face model with its own head (or an encoder + xstilts head export), scored as the xstilts head
    `head` of the task's type and labels: `forward` takes and gives what `MultiHeadModel.forward` does."""

    def __init__(self, inner: nn.Module, head: str, spec: HeadSpec, order: list[int] | None) -> None:
        super().__init__()
        self.inner, self.order = inner, order
        self.specs = {head: spec}

    def forward(self, head: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, choices: int = 1,
                **extra: torch.Tensor) -> torch.Tensor:
        kind = self.specs[head].type
        if isinstance(self.inner, MultiHeadModel):
            logits = self.inner(next(iter(self.inner.specs)), input_ids, attention_mask, choices, **extra)
        else:
            logits = hf_logits(self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra), kind)
        if kind == "span_qa":  # padding scores the lowest value, as the xstilts span head has it
            logits = logits.masked_fill(~attention_mask.bool()[..., None], torch.finfo(logits.dtype).min)
        return logits if self.order is None else logits[..., self.order]


def load_imported(directory: Path, spec: TaskSpec) -> ImportedModel:
    """A Hugging Face folder's model (its weights in whatever precision, loaded as fp32) ready to score `spec`."""
    head, order = imported_head(directory, spec)
    if (directory / HEAD_SETTINGS).is_file():
        inner: nn.Module = load_exported(directory)
    else:
        try:
            inner, info = AUTO_CLASSES[spec.type].from_pretrained(  # safetensors only: no pickle is loaded
                str(directory), dtype=torch.float32, use_safetensors=True, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise XstiltsError(f"{directory}: the model's weights cannot be loaded ({first})") from None
        if info["missing_keys"]:  # transformers would fill them at random, a head scored by chance
            raise XstiltsError(f"{directory}: its weights lack {sorted(info['missing_keys'])[:3]}; save the whole "
                               f"{head} (save_pretrained)")
    return ImportedModel(inner.eval(), head, HeadSpec(spec.type, tuple(spec.labels)), order)

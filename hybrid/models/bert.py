"""BERT-family encoders from a local pretrained directory, with a classification or a span head.

The encoder is whatever ``AutoModel`` builds from ``pretrained_dir`` (BERT, MiniLM, DistilBERT-shaped
BERTs...); nothing is fetched from the Hugging Face hub. The config chooses which encoder layers are
kept (the bottom ``num_layers``, or explicit ``keep_layers``, which is how a distilled student takes
every other layer of its teacher), how many lower layers are frozen, dropout, pooling and the
maximum sequence length applied when batches are padded.

Two families share this module: ``bert`` (sequence classification, inputs ``input_ids`` and
``attention_mask``) and ``bert_qa`` (extractive question answering, which also takes
``token_type_ids`` and returns start and end logits stacked as ``(batch, seq_len, 2)``, so that
``cross_entropy(logits, [start, end])`` is the mean of the start and end losses).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from hybrid._dataclass_io import require
from hybrid.models.tasks import LABEL, TEACHER_LOGITS
from hybrid.text import ATTENTION_MASK, INPUT_IDS, load_tokenizer, offline, pad_batch

TOKEN_TYPE_IDS = "token_type_ids"
ENCODER_DIR = "encoder"
"""Sub-directory of a saved model holding the encoder's ``config.json`` and the tokenizer files."""
PATH_FIELDS = ("pretrained_dir", "init_from")
"""Config fields naming local directories (see ``ModelFamily.path_fields``)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
SPAN_PAD_LOGIT = -1e4
"""A span model's start and end logit at a padding position: no span starts or ends there, and at any
distillation temperature it carries no probability."""
TEACHER_WINDOW_LENGTHS = "teacher_window_lengths"
"""``bert_qa`` rows: the unpadded length of each of the example's windows, in order (``int32``), which
splits the row's ``teacher_logits`` (``(sum of lengths, 2)``) back into windows."""


@dataclass(frozen=True)
class BertConfig:
    """Architecture and input shaping of a BERT-family model. Tunable fields are marked."""

    pretrained_dir: str = ""
    """Local directory with ``config.json``, the weights and the tokenizer (``AutoModel``/``AutoTokenizer``)."""
    num_classes: int = 2
    """Classes of the classification head (ignored by ``bert_qa``)."""
    num_layers: int = 0
    """Tunable: keep only the bottom ``num_layers`` encoder layers (0 keeps all)."""
    keep_layers: tuple[int, ...] = ()
    """Explicit encoder layers to keep, by index in the source model (overrides ``num_layers``)."""
    frozen_layers: int = 0
    """Tunable: freeze the embeddings and the lowest ``frozen_layers`` kept layers (0 freezes nothing)."""
    dropout: float = 0.1
    """Tunable: dropout inside the encoder (hidden and attention) and before the head."""
    pooling: Literal["cls", "mean"] = "mean"
    """Sentence vector for classification: the ``[CLS]`` state, or the mean over real tokens
    (what sentence-transformer checkpoints such as all-MiniLM-L6-v2 were trained with)."""
    max_length: int = 128
    """Tunable: longer rows are truncated to this many tokens when a batch is padded (``bert_qa``: the
    window length, question and special tokens included)."""
    doc_stride: int = 32
    """``bert_qa``: context tokens shared by consecutive windows of a long context (below ``max_length``;
    checked for ``bert_qa`` only, see :func:`check_spans`)."""
    max_answer_length: int = 30
    """``bert_qa``: longest answer, in tokens, that span decoding considers."""
    init_from: str | None = None
    """A saved hybrid model directory whose fine-tuned weights (encoder and head) initialise this model,
    instead of the pretrained ones; ``keep_layers`` then index that model's layers."""
    pretrained_weights: bool = True
    """Load the pretrained weights (``false``: the architecture only, for weights loaded afterwards)."""

    def __post_init__(self) -> None:
        require(bool(self.pretrained_dir), "pretrained_dir is required: a local directory of a BERT-family model")
        require(self.num_classes >= 2, f"num_classes must be >= 2, but got {self.num_classes}")
        require(self.num_layers >= 0, f"num_layers must be >= 0 (0 keeps all), but got {self.num_layers}")
        require(all(i >= 0 for i in self.keep_layers), f"keep_layers must be >= 0, but got {list(self.keep_layers)}")
        require(
            list(self.keep_layers) == sorted(set(self.keep_layers)),
            f"keep_layers must be increasing and distinct, but got {list(self.keep_layers)}",
        )
        require(self.frozen_layers >= 0, f"frozen_layers must be >= 0, but got {self.frozen_layers}")
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), but got {self.dropout}")
        require(self.max_length >= 8, f"max_length must be >= 8, but got {self.max_length}")
        require(self.doc_stride >= 0, f"doc_stride must be >= 0, but got {self.doc_stride}")
        require(self.max_answer_length >= 1, f"max_answer_length must be >= 1, but got {self.max_answer_length}")


def raise_missing(pretrained_dir: str) -> None:
    from hybrid.errors import ConfigError

    raise ConfigError(
        f"model.pretrained_dir: {pretrained_dir!r} has no config.json; it must be a local directory of a "
        "BERT-family model (config.json, weights, tokenizer files)"
    )


def check_spans(config: BertConfig) -> None:
    """The rules that only a span (``bert_qa``) model adds to :class:`BertConfig`.

    Raises:
        ConfigError: If ``doc_stride >= max_length`` (windows would not advance).
    """
    from hybrid.errors import ConfigError

    if config.doc_stride >= config.max_length:
        raise ConfigError(
            f"model.doc_stride must be < model.max_length={config.max_length} for bert_qa, but got {config.doc_stride}"
        )


def _kept(config: BertConfig, total: int) -> list[int]:
    from hybrid.errors import ConfigError

    layers = list(config.keep_layers) or list(range(config.num_layers or total))
    if not layers or max(layers) >= total:
        raise ConfigError(
            f"model.keep_layers/num_layers select layers {layers}, but the source model has {total} layers"
        )
    if config.frozen_layers > len(layers):
        raise ConfigError(
            f"model.frozen_layers must be <= the {len(layers)} kept layers, but got {config.frozen_layers}"
        )
    return layers


def _set_dropout(module: nn.Module, p: float) -> None:
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = p


def _load_encoder(config: BertConfig) -> nn.Module:
    """The pretrained (or only configured) encoder of ``config.pretrained_dir``, without its pooler."""
    offline()
    if not (Path(config.pretrained_dir) / "config.json").is_file():
        raise_missing(config.pretrained_dir)
    from hybrid._quant_torch import quiet

    # transformers imports torchao when it is installed, which logs about CUDA kernels a CPU torch lacks; its
    # load report lists the pooler weights we deliberately drop. Neither is actionable: silence both here.
    with quiet():
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            hf_config = AutoConfig.from_pretrained(config.pretrained_dir, local_files_only=True)
            if not config.pretrained_weights:
                return AutoModel.from_config(hf_config, add_pooling_layer=False)
            return AutoModel.from_pretrained(
                config.pretrained_dir, config=hf_config, add_pooling_layer=False, local_files_only=True
            )
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()


class _BertBase(nn.Module):
    """The encoder with its layers selected and its lower part frozen."""

    def __init__(self, config: BertConfig, head_outputs: int) -> None:
        super().__init__()
        self.config = config
        source: _BertBase | None = None
        if config.init_from is not None:
            from hybrid.artifacts import load_model

            loaded, _ = load_model(config.init_from)
            source = loaded if isinstance(loaded, _BertBase) else None
            if source is None:
                from hybrid.errors import ConfigError

                raise ConfigError(f"model.init_from: {config.init_from!r} does not hold a BERT-family model")
            encoder = source.encoder
        else:
            encoder = _load_encoder(config)
        layers = _kept(config, len(encoder.encoder.layer))
        encoder.encoder.layer = nn.ModuleList([encoder.encoder.layer[i] for i in layers])
        encoder.config.num_hidden_layers = len(layers)
        _set_dropout(encoder, config.dropout)
        self.encoder = encoder
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(encoder.config.hidden_size, head_outputs)
        if source is not None and source.head.out_features == head_outputs:
            self.head.load_state_dict(source.head.state_dict())
        if config.frozen_layers:
            for module in (encoder.embeddings, *encoder.encoder.layer[: config.frozen_layers]):
                module.requires_grad_(False)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, seq_len, hidden)`` last hidden states."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state


class BertClassifier(_BertBase):
    """Encoder -> pooled sentence vector -> dropout -> linear logits."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, config.num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, seq_len)`` token ids and mask to ``(batch, num_classes)`` logits."""
        hidden = self.hidden(input_ids, attention_mask)
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq_len, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


class BertSpanHead(_BertBase):
    """Encoder -> per-token start and end logits (extractive question answering)."""

    def __init__(self, config: BertConfig) -> None:
        check_spans(config)
        super().__init__(config, 2)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(batch, seq_len, 2)`` logits: ``[..., 0]`` start, ``[..., 1]`` end; padding gets :data:`SPAN_PAD_LOGIT`."""
        logits = self.head(self.dropout(self.hidden(input_ids, attention_mask, token_type_ids)))
        return logits.masked_fill(attention_mask.unsqueeze(-1) == 0, SPAN_PAD_LOGIT)


@dataclass(frozen=True)
class TextCollate(NumpyBatchCollateFn):
    """Turns a numpy batch of variable-length ``input_ids`` into padded tensors (dynamic padding).

    Every other column becomes a tensor as it is (labels, teacher logits). A Ray Data collate class
    (what ``iter_torch_batches(collate_fn=...)`` asks for since Ray 2.47); picklable, so it also
    serves ``map_batches`` and Spark UDFs.
    """

    pad_id: int
    sep_id: int
    max_length: int

    def arrays(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """The padded numpy arrays (for ONNX Runtime and other non-torch consumers)."""
        out = {k: _stack(v) for k, v in batch.items() if k != INPUT_IDS}
        ids, mask = pad_batch(list(batch[INPUT_IDS]), pad_id=self.pad_id, max_length=self.max_length, sep_id=self.sep_id)
        out[INPUT_IDS], out[ATTENTION_MASK] = ids, mask
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # Ray hands out read-only views of its blocks: copy those (labels, teacher logits: a few bytes a row)
        # rather than give torch a tensor it must not write to.
        return {
            k: torch.as_tensor(v) if v.flags.writeable else torch.tensor(v)
            for k, v in self.arrays(batch).items()
            if v.dtype != object
        }


QA_COLUMNS = ("question", "context", "answer_start", "answer_text")
"""Columns of a question answering row (one example; its windows are made per batch)."""
ANSWERS = "answers"
"""``list<string>`` column of every accepted answer of an example (for EM/F1)."""


@dataclass(frozen=True)
class QACollate(NumpyBatchCollateFn):
    """Turns a numpy batch of question answering *examples* into padded *windows* over their contexts.

    Windows are made here, per batch, rather than stored: all windows of an example then share a batch,
    so span decoding and exact match / F1 need no gathering across batches or workers. The output holds
    the model inputs, ``label`` (``(windows, 2)``: start and end token) and what decoding needs
    (``offsets``, ``example_index``, ``context``, ``answers``). A batch that carries a teacher's outputs
    (``teacher_logits`` and ``teacher_window_lengths``, see :func:`qa_teacher_outputs`) also gets
    ``teacher_logits`` ``(windows, L, 2)``, padded like the windows (:func:`pad_teacher_windows`).
    """

    tokenizer_dir: str
    max_length: int
    doc_stride: int

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from hybrid.qa import featurize

        columns = {k: list(batch[k]) for k in QA_COLUMNS}
        feats = featurize(load_tokenizer(self.tokenizer_dir), columns, max_length=self.max_length,
                          doc_stride=self.doc_stride, with_labels=True)
        out: dict[str, Any] = {k: torch.as_tensor(feats[k]) for k in (INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK)}
        if TEACHER_LOGITS in batch:
            out[TEACHER_LOGITS] = torch.as_tensor(pad_teacher_windows(
                list(batch[TEACHER_LOGITS]), window_lengths=list(batch[TEACHER_WINDOW_LENGTHS]),
                attention_mask=feats[ATTENTION_MASK], example_index=feats["example_index"]))
        out[LABEL] = torch.as_tensor(np.stack([feats["start_positions"], feats["end_positions"]], axis=1))
        out["offsets"], out["example_index"] = feats["offsets"], feats["example_index"]
        out["context"] = [str(c) for c in batch["context"]]
        answers = batch.get(ANSWERS)
        out[ANSWERS] = [list(a) for a in answers] if answers is not None else [[t] for t in batch["answer_text"]]
        return out


def pad_teacher_windows(
    logits: list[np.ndarray], *, window_lengths: list[np.ndarray], attention_mask: np.ndarray,
    example_index: np.ndarray, pad: float = SPAN_PAD_LOGIT,
) -> np.ndarray:
    """A batch's stored teacher span logits, padded like its windows.

    Args:
        logits: Per example, its windows' logits unpadded and concatenated, ``(sum of lengths, 2)`` (or flat).
        window_lengths: Per example, the unpadded length of each of its windows.
        attention_mask: ``(windows, L)`` of the collated windows (ones, then padding zeros).
        example_index: ``(windows,)`` the example of each window.
        pad: Logit at padding positions (see :data:`SPAN_PAD_LOGIT`).

    Returns:
        ``(windows, L, 2)`` float32.

    Raises:
        DataError: If the stored windows are not the collated ones (the teacher's logits were computed with
            another ``max_length``, ``doc_stride`` or tokenizer than the student's).
    """
    from hybrid.errors import DataError

    lengths = np.asarray(attention_mask).sum(axis=1).astype(np.int64)  # (windows,)
    example_index = np.asarray(example_index)
    out = np.full((len(lengths), np.asarray(attention_mask).shape[1], 2), pad, np.float32)
    examples = int(example_index.max()) + 1 if len(example_index) else 0
    if len(logits) != examples or len(window_lengths) != examples:
        raise DataError(f"teacher logits must be given for each of the batch's {examples} examples, but got "
                        f"{len(logits)} logits and {len(window_lengths)} window lengths")
    for i, (flat, stored) in enumerate(zip(logits, window_lengths)):
        windows = np.flatnonzero(example_index == i)
        stored = np.asarray(stored, np.int64).reshape(-1)
        flat = np.asarray(flat, np.float32).reshape(-1, 2)
        if not np.array_equal(stored, lengths[windows]) or len(flat) != stored.sum():
            raise DataError(
                f"example {i}'s teacher logits must cover its windows of lengths {lengths[windows].tolist()}, but "
                f"they cover windows of lengths {stored.tolist()} ({len(flat)} positions): the teacher and the "
                "student must window examples alike (same tokenizer, model.max_length and model.doc_stride; "
                "distill.student must not change them)")
        ends = np.cumsum(stored)
        for window, end, n in zip(windows, ends, stored):
            out[window, :n] = flat[end - n : end]
    return out


def qa_teacher_outputs(
    model: Any, batch: dict[str, Any], *, columns: tuple[str, ...] | list[str], collate: Any,
) -> dict[str, np.ndarray]:
    """A span teacher's logits for a numpy batch of examples, stored per example (see ``ModelFamily.teacher_outputs``).

    An example's windows and their unpadded lengths depend only on the example and the config's
    ``max_length``/``doc_stride``, so each row keeps its windows' logits unpadded and concatenated; the
    student's :class:`QACollate` pads them to whatever window length its batch has.

    Args:
        model: The span teacher, in eval mode.
        batch: A numpy batch of example rows.
        columns: The family's ``input_columns``.
        collate: The teacher's :class:`QACollate`.

    Returns:
        ``teacher_logits`` (per row, float32 ``(sum of window lengths, 2)``) and ``teacher_window_lengths``
        (per row, int32 ``(windows,)``), as object arrays of one array per row.
    """
    collated = collate(dict(batch))
    with torch.no_grad():
        logits = model(*(collated[c] for c in columns)).float().numpy()  # (windows, L, 2)
    lengths = collated[ATTENTION_MASK].sum(dim=1).numpy()  # (windows,)
    example_index = np.asarray(collated["example_index"])
    rows = len(batch[QA_COLUMNS[0]])
    flat, kept = np.empty(rows, dtype=object), np.empty(rows, dtype=object)
    for i in range(rows):
        windows = np.flatnonzero(example_index == i)
        flat[i] = np.concatenate([logits[w, : lengths[w]] for w in windows]).astype(np.float32)  # (positions, 2)
        kept[i] = lengths[windows].astype(np.int32)
    return {TEACHER_LOGITS: flat, TEACHER_WINDOW_LENGTHS: kept}


def qa_collate(config: BertConfig) -> QACollate:
    """The collate function making ``config``'s windows."""
    return QACollate(tokenizer_dir=config.pretrained_dir, max_length=config.max_length, doc_stride=config.doc_stride)


def _stack(column: Any) -> np.ndarray:
    array = np.asarray(column)
    if array.dtype == object and len(array) and isinstance(array[0], np.ndarray):
        return np.stack(array)
    return array


def text_collate(config: BertConfig) -> TextCollate:
    """The collate function of ``config``'s tokenizer and ``max_length``."""
    tokenizer = load_tokenizer(config.pretrained_dir)
    return TextCollate(pad_id=int(tokenizer.pad_token_id), sep_id=int(tokenizer.sep_token_id), max_length=config.max_length)


def export_assets(model: nn.Module, config: BertConfig, directory: Path) -> BertConfig:
    """Write the encoder's config (layers as kept) and copy the tokenizer into ``directory/encoder``, so the
    saved model is self-contained; returns the config to record: the architecture only, pointing at that
    copy, with its layers already selected."""
    module = getattr(model, "module", model)
    target = directory / ENCODER_DIR
    target.mkdir(parents=True, exist_ok=True)
    source = Path(config.pretrained_dir)
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and (source / name).resolve() != (target / name).resolve():
            shutil.copyfile(source / name, target / name)
    (target / "config.json").write_text(module.encoder.config.to_json_string(use_diff=False))
    return replace(
        config, pretrained_dir=ENCODER_DIR, num_layers=0, keep_layers=(), init_from=None, pretrained_weights=False
    )


def student_layers(encoder_dir: str | Path, fraction: float) -> list[int]:
    """Evenly spaced layers of the encoder in ``encoder_dir``, ``round(fraction * layers)`` of them, ending
    with the top layer (whose output the head was trained on): 6 layers at 0.5 give ``[1, 3, 5]``."""
    total = int(json.loads((Path(encoder_dir) / "config.json").read_text())["num_hidden_layers"])
    kept = max(1, round(total * fraction))
    return [round((i + 1) * total / kept) - 1 for i in range(kept)]


def make_student(
    teacher_config: Mapping[str, Any], *, width_multiplier: float, teacher_dir: str | Path | None = None
) -> dict[str, Any]:
    """A shallower BERT that starts from its teacher's fine-tuned weights: the teacher's recorded config
    keeping :func:`student_layers` of the teacher saved in ``teacher_dir`` (``init_from``), nothing frozen.

    Raises:
        ValueError: If ``teacher_dir`` is None.
    """
    if teacher_dir is None:
        raise ValueError("a BERT student starts from its teacher's weights: pass teacher_dir")
    teacher_dir = Path(teacher_dir).resolve()
    layers = student_layers(teacher_dir / ENCODER_DIR, width_multiplier)
    return {**teacher_config, "pretrained_dir": str(teacher_dir / ENCODER_DIR), "init_from": str(teacher_dir),
            "keep_layers": layers, "num_layers": 0, "frozen_layers": 0}


def localize(config: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Resolve a saved model's ``pretrained_dir`` (a sub-directory, ``encoder``) against its directory.

    Raises:
        ArtifactError: If the saved config names ``init_from`` (its weights are already in the directory),
            or ``pretrained_dir`` is not a relative path inside the directory holding a ``config.json``.
    """
    from hybrid.artifacts import META, ArtifactError, path_problem

    if config.get("init_from"):
        raise ArtifactError(
            f"{directory}: a saved model holds its own weights, so {META}'s config.init_from must be null, but it "
            f"is {config['init_from']!r}; re-save the model with hybrid"
        )
    name = config.get("pretrained_dir")
    problem = path_problem(name)
    if problem is not None:
        raise ArtifactError(
            f"{directory}: {META}'s config.pretrained_dir must name a sub-directory of the model directory "
            f"('{ENCODER_DIR}' when hybrid saves it), but {problem}"
        )
    if not (directory / name / "config.json").is_file():
        raise ArtifactError(
            f"{directory}: {META}'s config.pretrained_dir is {name!r}, but {name}/config.json is missing: the "
            "model directory is incomplete (an int8 model is saved with assets_from=<its float model directory>)"
        )
    return {**config, "pretrained_dir": str(directory / name)}

"""Model families and the ``create_model`` factory."""

from __future__ import annotations

from hybrid.models import bert, cnn, predict
from hybrid.models.bert import BertClassifier, BertConfig, BertSpanHead
from hybrid.models.cnn import CNN, CNNConfig
from hybrid.models.registry import (
    batch_inputs,
    collate_fn,
    create_model,
    get_family,
    list_models,
    model_config,
    register_model,
)

register_model(
    "cnn", CNNConfig, CNN, input_columns=("pixels",), make_student=cnn.make_student,
    data_fields=("num_classes", "image_size"), predictor=predict.image_predictor,
)
register_model(
    "bert",
    BertConfig,
    BertClassifier,
    input_columns=(bert.INPUT_IDS, bert.ATTENTION_MASK),
    collate=bert.text_collate,
    export_assets=bert.export_assets,
    localize=bert.localize,
    modality="text",
    path_fields=bert.PATH_FIELDS,
    padding_mask=bert.ATTENTION_MASK,
    make_student=bert.make_student,
    data_fields=("num_classes",),
    predictor=predict.text_predictor,
)
register_model(
    "bert_qa",
    BertConfig,
    BertSpanHead,
    input_columns=(bert.INPUT_IDS, bert.TOKEN_TYPE_IDS, bert.ATTENTION_MASK),
    collate=bert.qa_collate,
    export_assets=bert.export_assets,
    localize=bert.localize,
    task="spans",
    modality="qa",
    path_fields=bert.PATH_FIELDS,
    padding_mask=bert.ATTENTION_MASK,
    make_student=bert.make_student,
    check_config=bert.check_spans,
    teacher_outputs=bert.qa_teacher_outputs,
    student_inherits=("max_length", "doc_stride"),
    predictor=predict.span_predictor,
)

__all__ = [
    "CNN",
    "BertClassifier",
    "BertConfig",
    "BertSpanHead",
    "CNNConfig",
    "batch_inputs",
    "collate_fn", "create_model", "get_family", "list_models", "model_config", "register_model"]

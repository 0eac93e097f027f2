"""int8 for the CPU package: every convolution and linear layer computes on int8 weights
(symmetric, one scale per output channel) and uint8 activations (one scale and zero point per
tensor, calibrated), through torchao's PT2E flow with its X86InductorQuantizer. Inductor,
with freezing on (aoti.py), fuses each quantize/dequantize pair with its layer into oneDNN's
int8 kernels (VNNI on AVX-512 or AVX2 CPUs). The deformable attention op, the decoder's
self-attention (nn.MultiheadAttention, whose projections the quantizer does not match), the
softmax, the normalisations and the box arithmetic stay float32.

torchao (in requirements.txt) is imported only when a package is quantised.

Shapes: images (3, H, W) float on a 0-255 scale, in the model's input format.
"""

from typing import Sequence

import torch
from torch import fx

__all__ = ["quantize_int8", "quantized_layers"]


def _torchao():
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as e:
        raise ImportError(
            f"the int8 package needs torchao ({e}): pip install torchao (requirements.txt pins "
            f"the version tested)"
        ) from e
    return prepare_pt2e, convert_pt2e, x86


def _mark_convolutions(graph: fx.Graph) -> None:
    """Tags every conv2d node as functional conv2d for the quantizer, which finds layers by the
    module class they were traced from: Detectron2's Conv2d (a subclass with its own forward,
    the backbones' every convolution) leaves no tag that it matches."""
    for node in graph.nodes:
        if node.target is torch.ops.aten.conv2d.default and not node.meta.get("source_fn_stack"):
            node.meta["source_fn_stack"] = [(node.name, torch.nn.functional.conv2d)]


@torch.no_grad()
def quantize_int8(module: fx.GraphModule, images: Sequence[torch.Tensor]) -> fx.GraphModule:
    """The exported model's module (ExportedProgram.module(), taking one image) with int8
    convolutions and linear layers: activation ranges observed on images, each (3, H, W) of a
    size the module takes, then quantize/dequantize pairs around every layer. Run eagerly it
    computes the int8 arithmetic in float32 (the reference of the compiled package)."""
    prepare_pt2e, convert_pt2e, x86 = _torchao()
    _mark_convolutions(module.graph)
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    observed = prepare_pt2e(module, quantizer)
    for image in images:
        observed(image)
    return convert_pt2e(observed)


def quantized_layers(module: fx.GraphModule) -> int:
    """How many layers of a quantize_int8 module have int8 weights (one scale per channel)."""
    dequantize = torch.ops.quantized_decomposed.dequantize_per_channel.default
    return sum(1 for n in module.graph.nodes if n.target is dequantize)

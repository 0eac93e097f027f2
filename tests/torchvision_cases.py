"""torchvision's backbones as references for this project's converted ones: random weights and
BatchNorm statistics, the features of each ResNet stage, and their comparison (rtol 1e-5, atol
1e-5 of the largest value).

Shapes: x the image batch (N, 3, H, W); res2..res5 the stages' outputs at strides 4..32.
"""

import torch
import torchvision


def randomize_batch_norms(model):
    """`model` in eval mode, with random affine parameters and statistics in every BatchNorm2d
    (from torch's global generator)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(1000)
    return model.eval()


def random_resnet50(seed, dilation=False):
    """torchvision's ResNet-50 in eval mode with random weights and BN statistics."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, dilation])
    return randomize_batch_norms(model)


def torchvision_features(model, x):
    """{"res2".."res5": the outputs of layer1..layer4}."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    features = {}
    for k in range(1, 5):
        x = getattr(model, f"layer{k}")(x)
        features[f"res{k + 1}"] = x
    return features


def assert_same_features(ours, reference):
    for name, expected in reference.items():
        torch.testing.assert_close(
            ours[name], expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item(), msg=name
        )

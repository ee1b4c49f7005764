"""MinkowskiEngine side of minkunet_benchmark.py (run by a Python that has
MinkowskiEngine 0.5.4 and PyTorch; docs/benchmarks.md, "Peer environments",
has the build).

The network is ME's MinkUNet (examples/minkunet.py) written out here with
ME's own `BasicBlock`, since the examples are not installed with the
package: conv5-BN-ReLU, four stride-2 conv2-BN-ReLU + blocks, four stride-2
transposed conv2-BN-ReLU + concatenation with the skip + blocks, 1x1 conv.
Same input, same iteration (forward in training mode, cross-entropy, all
weight gradients), same VmHWM measurement; prints one JSON line.
"""

import argparse
import json
import time

import numpy as np
import torch
import MinkowskiEngine as ME
from MinkowskiEngine.modules.resnet_block import BasicBlock


def vm_hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def conv_bn_relu(cin, cout, kernel_size, stride=1, transpose=False):
    conv = ME.MinkowskiConvolutionTranspose if transpose else ME.MinkowskiConvolution
    return torch.nn.Sequential(
        conv(cin, cout, kernel_size=kernel_size, stride=stride, dimension=3),
        ME.MinkowskiBatchNorm(cout), ME.MinkowskiReLU())


def stage(cin, planes, count):
    """`count` BasicBlocks (ME's _make_layer with stride 1); a 1x1 conv + BN
    shortcut on the first when the width changes."""
    blocks = []
    for _ in range(count):
        down = None
        if cin != planes:
            down = torch.nn.Sequential(
                ME.MinkowskiConvolution(cin, planes, kernel_size=1, dimension=3),
                ME.MinkowskiBatchNorm(planes))
        blocks.append(BasicBlock(cin, planes, downsample=down, dimension=3))
        cin = planes
    return torch.nn.Sequential(*blocks)


class MinkUNet(torch.nn.Module):
    def __init__(self, cin, cout, depths, planes, init_dim=32):
        super().__init__()
        self.stem = conv_bn_relu(cin, init_dim, 5)
        self.down, self.enc, self.up, self.dec = (torch.nn.ModuleList() for _ in range(4))
        c = init_dim
        skips = [c]
        for i in range(4):
            self.down.append(conv_bn_relu(c, c, 2, stride=2))
            self.enc.append(stage(c, planes[i], depths[i]))
            c = planes[i]
            skips.append(c)
        skips.pop()
        for i in range(4, 8):
            self.up.append(conv_bn_relu(c, planes[i], 2, stride=2, transpose=True))
            self.dec.append(stage(planes[i] + skips.pop(), planes[i], depths[i]))
            c = planes[i]
        self.final = ME.MinkowskiConvolution(c, cout, kernel_size=1, bias=True,
                                             dimension=3)

    def forward(self, x):
        out = self.stem(x)
        skips = [out]
        for down, enc in zip(self.down, self.enc):
            out = enc(down(out))
            skips.append(out)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            out = dec(ME.cat(up(out), skips.pop()))
        return self.final(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--network", default="14A")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--input", required=True)
    p.add_argument("--depths", required=True)
    p.add_argument("--planes", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = np.load(args.input)
    coordinates = torch.from_numpy(np.concatenate(
        [np.zeros((len(data["coordinates"]), 1), np.int32), data["coordinates"]], 1))
    features = torch.from_numpy(data["features"])
    labels = torch.from_numpy(data["labels"])
    base = vm_hwm_mb()
    depths = [int(v) for v in args.depths.split(",")]
    planes = [int(v) for v in args.planes.split(",")]
    net = MinkUNet(3, 2, depths, planes).train()
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        net.zero_grad(set_to_none=True)
        manager = ME.CoordinateManager(D=3, num_threads=args.threads)
        x = ME.SparseTensor(features, coordinates.int(), coordinate_manager=manager)
        loss = loss_fn(net(x).F, labels)
        loss.backward()
        return loss.item()

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"library": "MinkowskiEngine", "sites": len(coordinates),
                      "times": times, "first": first, "peak_mb": vm_hwm_mb(),
                      "base_mb": base,
                      "params": int(sum(p.numel() for p in net.parameters()))}))


if __name__ == "__main__":
    main()

"""``jimunet.models.mnist_resnet`` in PyTorch (CPU): the reference for bench.py's ``resnet128``
task (the ``--model resnet`` recipe's training step at batch 128, on 28×28×1 batches).

The same network: a 3×3 stem conv → BN → ReLU (16 channels), residual blocks (32 stride 2, 64
stride 2, 64) of ``ReLU(BN(conv(ReLU(BN(conv x)))) + shortcut)``, the stride-2 blocks with a 1×1
projection conv → BN, global average pooling, Dense. Convs without bias. TensorFlow's "same"
padding of a stride-2 3×3 conv on an even size pads one row and column at the bottom and right
only; PyTorch's ``padding=1`` would pad both sides, so those convs pad explicitly. The recipe's
optimizer: SGD with Nesterov momentum 0.9, weight decay 5e-4 on the conv and Dense weights.
Its ``convs``, ``bns`` and ``fc`` are jimunet's Conv2D, BatchNorm and Dense layers in jimunet's
order, so ``cifar_torch.copy_from_jimunet`` and ``init_like_jimunet`` serve it too.
"""
from __future__ import annotations

STEM, BLOCKS, MOMENTUM, WEIGHT_DECAY, SMOOTHING = 16, ((32, 2), (64, 2), (64, 1)), 0.9, 5e-4, 0.0


def build_net(stem: int = STEM, blocks=BLOCKS, num_classes: int = 10, channels: int = 1):
    """``mnist_resnet``'s network as a ``torch.nn.Module`` on NCHW input."""
    import torch
    nn = torch.nn

    class MnistResNet(nn.Module):
        def __init__(self):
            super().__init__()
            plan, cin = [(channels, stem, 3, 1)], stem  # (cin, cout, kernel, stride) in jimunet's order
            self.blocks = []
            for cout, stride in blocks:
                first = len(plan)
                plan += [(cin, cout, 3, stride), (cout, cout, 3, 1)]
                if cin != cout or stride != 1:
                    plan.append((cin, cout, 1, stride))
                self.blocks.append((first, len(plan) - first == 3))
                cin = cout
            self.plan = plan
            self.convs = nn.ModuleList(nn.Conv2d(a, b, k, stride=s, padding=k // 2 if s == 1 else 0, bias=False)
                                       for a, b, k, s in plan)
            self.bns = nn.ModuleList(nn.BatchNorm2d(b) for _, b, _, _ in plan)
            self.fc = nn.Linear(cin, num_classes)

        def cb(self, i, x):
            _, _, k, s = self.plan[i]
            if s != 1 and k == 3:  # TF "same": the extra row and column go at the bottom and right
                x = nn.functional.pad(x, (0, 1, 0, 1))
            return self.bns[i](self.convs[i](x))

        def forward(self, x):
            x = torch.relu(self.cb(0, x))
            for first, projected in self.blocks:
                h = self.cb(first + 1, torch.relu(self.cb(first, x)))
                x = torch.relu(h + (self.cb(first + 2, x) if projected else x))
            return self.fc(x.mean(dim=(2, 3)))

    return MnistResNet()


def make_optimizer(net, lr: float = 0.2):
    import torch
    decayed = [m.weight for m in (*net.convs, net.fc)]
    ids = {id(p) for p in decayed}
    return torch.optim.SGD([{"params": decayed, "weight_decay": WEIGHT_DECAY},
                            {"params": [p for p in net.parameters() if id(p) not in ids], "weight_decay": 0.0}],
                           lr=lr, momentum=MOMENTUM, nesterov=True)

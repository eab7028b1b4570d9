"""Reference point for scripts/benchmark.py (scripts/benchmark_torch.py): the same PGD-k training step in plain
PyTorch (CPU). A PreAct ResNet-18 (CIFAR layout, as tfadv's `preact_resnet18`), PGD-k with random start, eps 8/255,
step 2/255, BatchNorm in eval mode for the attack, SGD momentum 0.9 with weight decay 5e-4: the step users would
write by hand. PyTorch is not a tfadv dependency: importing this module needs it (ModuleNotFoundError otherwise);
it exists only to measure against."""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        layers, cin = [], 64
        for stage, cout in enumerate((64, 128, 256, 512)):
            for block in range(2):
                layers.append(PreActBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def pgd_step(model, optimizer, x, y, eps, alpha, steps, autocast):
    model.eval()
    delta = torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        grad, = torch.autograd.grad(loss, delta)
        delta = (delta + alpha * grad.sign()).clamp(-eps, eps).detach()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)


def benchmark(batch_size=128, steps=3, attack_steps=10):
    """Seconds per PGD-k training step in float32 and in bfloat16 autocast (after one warm-up step), printing a
    line per row; returns {torch_pgdK[_bf16]: {seconds_per_step, images_per_second}}."""
    torch.manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    results = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch_size}, PGD-{attack_steps}")
    for autocast in (False, True):
        model = PreActResNet18()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        pgd_step(model, optimizer, x, y, 8 / 255, 2 / 255, attack_steps, autocast)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            pgd_step(model, optimizer, x, y, 8 / 255, 2 / 255, attack_steps, autocast)
        seconds = (time.perf_counter() - start) / steps
        name = f"torch_pgd{attack_steps}" + ("_bf16" if autocast else "")
        results[name] = {"seconds_per_step": round(seconds, 4), "images_per_second": round(batch_size / seconds, 2)}
        print(f"{name:<18}{seconds:>8.3f} s/step {batch_size / seconds:>8.2f} img/s", flush=True)
    return results

#!/usr/bin/env python
"""Dynamic Training in a plain PyTorch loop: a torchvision model, ImageFolder, a DataLoader whose
sampler is dyntrain.SubsetSampler. Data: PATH/train/<class>/*, e.g. the JPEG copy of CIFAR-10.
    python tune_scripts/own_loop.py --data data/cifar10-jpeg --epochs 10 --alpha 20000"""

import argparse

import torch
import torchvision
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

import dyntrain

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--data", required=True)
p.add_argument("--policy", default="dynamic")
p.add_argument("--alpha", type=int, default=20_000, help="images per epoch")
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--val-size", type=int, default=5_000, help="held out of train/ to drive resampling")
p.add_argument("--limit", type=int, help="use only the first N images of train/ (a quick look)")
p.add_argument("--workers", type=int, default=2)
args = p.parse_args()

device = "cuda" if torch.cuda.is_available() else "cpu"
to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.25,) * 3)])
images = torchvision.datasets.ImageFolder(f"{args.data}/train", transform=to_tensor)
order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[: args.limit].tolist()
val_set, train_set = Subset(images, order[: args.val_size]), Subset(images, order[args.val_size :])

policy = dyntrain.make_policy(args.policy, n=len(train_set), alpha=args.alpha)  # beta/delta/gamma: the paper's
loader = DataLoader(train_set, batch_size=128, sampler=dyntrain.SubsetSampler(policy, seed=0), num_workers=args.workers)
val_loader = DataLoader(val_set, batch_size=512, num_workers=args.workers)
model = torchvision.models.resnet18(num_classes=len(images.classes)).to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(1, args.epochs + 1):
    model.train()
    for x, y in loader:  # exactly the current subset A, each image once, shuffled
        loss = torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        for x, y in val_loader:
            correct += (model(x.to(device)).argmax(1) == y.to(device)).sum()
    decision = policy.update(epoch, int(correct), len(val_set))  # may resample A for the next epoch
    print(f"epoch {epoch}: trained on {len(loader.sampler)} images, val acc {int(correct) / len(val_set):.4f}, "
          f"resample {decision.resample}")

"""The two ways to train and predict that the benchmarks compare, on the same data and model.

*The lab's way*: a ``Dataset`` that decodes each photograph in full with Pillow (``Image.open(p).convert('RGB')``),
applies torchvision's ``Resize(S)``, ``CenterCrop(S)``, flips, ``ToTensor`` and ``Normalize`` in the loader
worker, and a plain fp32 loop (default memory format, SGD).

*The engine's way*: ``FundusDataset`` (reduced-scale draft decode, uint8 tensors), ``make_loader`` and
``train_one_epoch`` as ``retinopathy train`` builds them, with the settings
``engine_settings`` picks for the device unless told otherwise.
"""
from __future__ import annotations

import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms as T

from retinopathy.data import FundusDataset, Normalize
from retinopathy.data.transforms import LAB_MEAN, LAB_STD
from retinopathy.models import build_model, make_objective
from retinopathy.training.engine import engine_settings, make_loader, train_one_epoch


class LabDataset(Dataset):
    """The lab's data path: full decode, Resize + CenterCrop (+ flips), ToTensor, Normalize in the worker."""

    def __init__(self, samples, size: int, train: bool = True):
        self.items = [(s.path, s.label) for s in samples]
        steps = [T.Resize(size), T.CenterCrop(size)]
        if train:
            steps += [T.RandomHorizontalFlip(), T.RandomVerticalFlip()]
        self.transform = T.Compose(steps + [T.ToTensor(), T.Normalize(LAB_MEAN, LAB_STD)])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return self.transform(Image.open(path).convert("RGB")), label


class Timed:
    """Yields at most ``steps`` batches of ``loader`` (fewer if ``seconds`` run out) and notes when each batch
    is asked for: between two asks lie one training step and its wait for data."""

    def __init__(self, loader, steps: int, seconds: float | None = None, skip: int = 1):
        self.loader, self.steps, self.seconds, self.skip = loader, steps, seconds, skip
        self.asks: list[float] = []
        self.sizes: list[int] = []

    def __iter__(self):
        self.asks, self.sizes = [], []
        it = iter(self.loader)
        for k in range(self.steps):
            now = time.perf_counter()
            self.asks.append(now)
            if self.seconds and k > self.skip and now - self.asks[self.skip] > self.seconds:
                break
            try:
                batch = next(it)
            except StopIteration:
                break
            self.sizes.append(len(batch[1]))
            yield batch
        else:
            self.asks.append(time.perf_counter())
        del it  # stops the loader's workers

    def rate(self) -> float:
        """Images per second after the first ``skip`` batches (start-up, first-call costs)."""
        n = sum(self.sizes[self.skip:])
        return n / (self.asks[len(self.sizes)] - self.asks[self.skip]) if n else 0.0


def sampler(dataset, seed: int) -> RandomSampler:
    return RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))


def lab_loader(samples, size: int, batch: int, workers: int, seed: int = 0, train: bool = True) -> DataLoader:
    ds = LabDataset(samples, size, train)
    return DataLoader(ds, batch_size=batch, sampler=sampler(ds, seed) if train else None, num_workers=workers)


def engine_dataset(catalog, size: int, split: str = "train", augment: str = "flips") -> FundusDataset:
    return FundusDataset(catalog, split, image_size=size, preprocess="lab", augment=augment, uint8=True)


def engine_loader(dataset, batch: int, workers: int, device, seed: int = 0) -> DataLoader:
    return make_loader(dataset, batch, workers, device, sampler(dataset, seed), False, seed)


def new_model(arch: str, device, seed: int = 0, state=None):
    torch.manual_seed(seed)
    model, _ = build_model(arch, 5, "linear")
    if state is not None:
        model.load_state_dict(state)
    return model.to(device)


def defaults(device, model) -> tuple[str, bool]:
    """(amp, channels_last) that ``retinopathy train`` picks on ``device`` with its default options."""
    return engine_settings(torch.device(device), model)


def sgd(model, lr: float = 1e-3):
    """The lab's optimiser, for both loops."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def lab_train(model, batches, device, opt=None) -> float:
    """The lab's loop: fp32, default memory format, SGD with momentum, a loss.item() per step.
    Returns the mean loss per image."""
    device = torch.device(device)
    model.train()
    opt = opt or sgd(model)
    crit = torch.nn.CrossEntropyLoss()
    losses = []
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append((loss.item() * len(y), len(y)))
    return sum(v for v, _ in losses) / max(1, sum(n for _, n in losses))


def engine_train(model, batches, device, amp: str, channels_last: bool, opt=None) -> dict:
    """``train_one_epoch`` with the same optimiser as the lab's loop, so only the engine differs."""
    device = torch.device(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = opt or sgd(model)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return train_one_epoch(model, make_objective("classification"), opt, batches, device,
                           Normalize(LAB_MEAN, LAB_STD).to(device), grader=model, frozen=False, scaler=scaler, amp=amp,
                           channels_last=channels_last, progress=False)


@torch.no_grad()
def lab_predict(model, loader, device) -> int:
    device = torch.device(device)
    model.eval()
    n = 0
    for x, _ in loader:
        model(x.to(device)).argmax(1).cpu()
        n += len(x)
    return n


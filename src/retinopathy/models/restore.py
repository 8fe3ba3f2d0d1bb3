"""Rebuild a trained grader from a checkpoint: model, objective and the preprocessing it was trained with."""
from __future__ import annotations

from pathlib import Path

from ..data.transforms import Preprocessing
from ..training.checkpoint import CheckpointError, checkpoint_file, load_checkpoint, run_folder
from .factory import Grader
from .objectives import DEFAULT_THRESHOLDS, NUM_GRADES, Objective, make_objective


def _dashed(variant: str) -> str:
    """``v2_s`` -> ``V2-S``"""
    return variant.upper().replace("_", "-")


def _dotted(variant: str) -> str:
    """``1_0`` -> ``1.0``"""
    return variant.replace("_", ".")


DISPLAY = {"resnet": ("ResNet", str), "resnext": ("ResNeXt-", lambda s: s.replace("_", " ")),
           "wide_resnet": ("Wide ResNet-", lambda s: s.replace("_", "-")), "efficientnet_": ("EfficientNet-", _dashed),
           "convnext_": ("ConvNeXt-", str.title), "vit_": ("ViT-", lambda s: s.upper().replace("_", "/")),
           "swin_": ("Swin-", _dashed), "maxvit_": ("MaxViT-", str.upper),
           "regnet_": ("RegNet", lambda s: _dotted(s.upper().replace("_", "-", 1))),  # y_1_6gf -> Y-1.6GF
           "mobilenet_": ("MobileNet-", lambda s: s.replace("_", "-").title()),
           "shufflenet_": ("ShuffleNet-", lambda s: _dotted(s.upper().replace("_X", " x"))),
           "mnasnet": ("MNASNet ", _dotted), "squeezenet": ("SqueezeNet ", _dotted), "densenet": ("DenseNet-", str),
           "vgg": ("VGG", _dashed), "alexnet": ("AlexNet", str), "googlenet": ("GoogLeNet", str),
           "inception_v3": ("Inception-v3", str)}


def display_name(arch: str) -> str:
    """A model's name as its paper writes it, for titles: ``resnet18`` -> ``ResNet18``, ``convnext_tiny`` ->
    ``ConvNeXt-Tiny``, ``efficientnet_v2_s`` -> ``EfficientNet-V2-S``, ``vit_b_16`` -> ``ViT-B/16``, the other
    torchvision classifiers likewise; a name it does not know as it is."""
    for prefix, (name, variant) in DISPLAY.items():
        if arch.startswith(prefix):
            return name + variant(arch[len(prefix):])
    return arch


def refuse_foreign(path: Path, ckpt: dict) -> None:
    """Raise when the checkpoint ``path`` is in a run's folder whose config.yaml says the run trained otherwise
    (another model, seed, lr...): a best.pt copied from another run, which evaluate would grade (and write this run's
    model card of), its split.csv taken for the checkpoint's."""
    from ..training.config import ConfigError
    from ..training.resume import disagreements

    run = run_folder(path)
    if path.resolve().parent not in (run.resolve(), (run / "checkpoints").resolve()) \
            or not (run / "config.yaml").is_file():
        return
    try:
        foreign = disagreements(ckpt.get("config") or {}, run / "config.yaml")
    except ConfigError:  # not a run's record: nothing to compare with
        return
    if foreign:
        raise CheckpointError(f"{path} is not the checkpoint of the run in {run}: it trained with "
                              f"{', '.join(foreign)}; put the run's own {path.name} back (or its config.yaml, if that "
                              "was edited), or use this checkpoint from a folder of its own")


def restore(checkpoint, map_location="cpu") -> tuple[Grader, Objective, Preprocessing, dict]:
    """(model in eval mode, objective, preprocessing, checkpoint dict) from a path or a loaded checkpoint.

    A run trained with ``--model-ema`` is restored with its averaged weights, the ones it evaluated and selected
    (as timm's ``load_checkpoint(use_ema=True)``)."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint, map_location)
    info = ckpt.get("model_info") or {}
    where = checkpoint if not isinstance(checkpoint, dict) else "checkpoint"
    if not isinstance(checkpoint, dict):
        refuse_foreign(checkpoint_file(checkpoint), ckpt)
    if not isinstance(info, dict) or not isinstance(info.get("preprocessing", {}), dict):
        raise CheckpointError(f"{where}: its model information is not as retinopathy train writes it (edited?); "
                              "pass a run's checkpoints/best.pt")
    if info.get("num_classes", NUM_GRADES) != NUM_GRADES:
        raise CheckpointError(f"{where}: trained for {info['num_classes']} classes; retinopathy grades 5 (0-4)")
    try:
        model = Grader(info["arch"], info["num_outputs"], info["head"], info.get("pair_eyes", False),
                       info.get("space_to_depth", 1), info.get("global_pool", "avg"))
        model.load_state_dict(ckpt["model_ema"] if ckpt.get("model_ema") is not None else ckpt["model"])
        objective = make_objective(info.get("objective", "classification"),
                                   thresholds=info.get("thresholds", DEFAULT_THRESHOLDS), decision=info.get("decision"))
        preprocessing = Preprocessing.from_dict(info["preprocessing"])
    except KeyError as e:
        raise CheckpointError(f"{where}: incomplete model information ({e} missing)") from None
    except ValueError as e:  # an architecture, head, objective or preset this version does not know
        raise CheckpointError(f"{where}: {e} (written by another retinopathy version?)") from None
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{where}: its weights do not fit {info['arch']} with a {info['head']} head and "
                              f"{info['num_outputs']} outputs ({first})") from None
    if objective.outputs != info["num_outputs"]:
        raise CheckpointError(f"{where}: {info['num_outputs']} outputs, where its objective "
                              f"{info.get('objective', 'classification')} has {objective.outputs}")
    model.eval()
    return model, objective, preprocessing, ckpt

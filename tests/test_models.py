"""Heads, the frozen phase, and ImageNet weights through torchvision's real loading path."""
from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import googlenet, resnet18, resnet34

from retinopathy.data import Normalize
from retinopathy.models import Grader, WeightsError, build_model, make_objective
from retinopathy.errors import RetinopathyError
from retinopathy.models.factory import GlobalPool, ModelError
from retinopathy.training.engine import Diverged, freeze_backbone, train_one_epoch


def test_lab_head_shape_and_init():
    torch.manual_seed(0)
    m = Grader("resnet18", 5, "lab")
    head = m.net.fc
    assert [type(x) for x in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[0].out_features == 50 and head[2].p == 0.25 and head[3].out_features == 5
    for lin in (head[0], head[3]):
        assert lin.bias.abs().max() == 0 and 0.007 < lin.weight.std() < 0.013
    assert Grader("resnet50", 5, "linear").net.fc.in_features == 2048


@pytest.mark.parametrize("arch,head_name", [("efficientnet_b0", "classifier.1"), ("convnext_tiny", "classifier.2")])
def test_other_torchvision_models(arch, head_name):
    m = Grader(arch, 5)
    assert m.head_name == head_name and m.head.out_features == 5
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_space_to_depth_sees_every_pixel_at_the_cost_of_half_the_size():
    torch.manual_seed(0)
    s2d, plain = Grader("resnet18", 5, space_to_depth=2).eval(), Grader("resnet18", 5).eval()
    assert s2d.net.conv1.in_channels == 12 and s2d.net.conv1.stride == plain.net.conv1.stride
    shapes = {}
    for name, model, size in (("s2d", s2d, 64), ("plain", plain, 32)):
        hook = model.net.layer1.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
        x = torch.randn(2, 3, size, size)
        assert model(x).shape == (2, 5)
        hook.remove()
    assert shapes["s2d"] == shapes["plain"]  # 64 px in, the feature maps of a 32 px input
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[0, :, 1, 1] += 1  # one pixel that a 2x downscaled input would blur away
    assert not torch.allclose(s2d(x), s2d(y))
    with pytest.raises(ValueError, match="space_to_depth"):
        Grader("resnet18", 5, space_to_depth=0)
    with pytest.raises(ValueError, match="googlenet rescales the three colour channels of its input itself"):
        Grader("googlenet", 5, space_to_depth=2)  # it trained until its first forward, then failed on 3 channels


def test_global_pooling_lies_between_average_and_max():
    x = torch.rand(2, 8, 4, 4, requires_grad=True)
    avg, mx = x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    assert torch.allclose(GlobalPool("avg")(x), avg) and torch.equal(GlobalPool("max")(x), mx)
    assert torch.allclose(GlobalPool("avgmax")(x), (avg + mx) / 2)
    gem = GlobalPool("gem")
    out = gem(x)
    assert (out > avg).all() and (out < mx).all()  # p = 3: above the mean, below the max
    out.sum().backward()
    assert gem.p.grad is not None and gem.p.grad != 0  # the exponent is learnt
    with torch.no_grad():
        gem.p.fill_(1.0)
        assert torch.allclose(gem(x), avg, atol=1e-6)
        gem.p.fill_(60.0)
        assert torch.allclose(gem(x), mx, rtol=0.05)
    one_spot = torch.zeros(1, 1, 4, 4)
    one_spot[0, 0, 1, 2] = 1.0  # a single lesion-like activation: the average dilutes it 16-fold
    assert GlobalPool("gem")(one_spot).item() > 5 * GlobalPool("avg")(one_spot).item()
    with pytest.raises(ValueError, match="global pooling"):
        GlobalPool("median")


def test_models_that_cannot_be_built_as_asked_say_so():
    for kwargs, named in (({"arch": "resnet19"}, "not a torchvision classification model \\(unknown\\)"),
                          ({"arch": "fcn_resnet50"}, "\\(detection, segmentation, video or optical flow\\)"),
                          ({"arch": "vgg11", "global_pool": "gem"}, "no global average pooling"),  # VGG's is 7x7
                          ({"arch": "squeezenet1_0"}, "no Linear layer")):
        with pytest.raises(ModelError, match=named):
            Grader(outputs=5, **kwargs)
    assert issubclass(ModelError, RetinopathyError)
    googlenet = Grader("googlenet", 5).train()  # no auxiliary outputs in training
    assert googlenet(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert googlenet.net.transform_input  # the input rescaling its ImageNet weights expect


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_grader_swaps_its_global_pooling(arch):
    model = Grader(arch, 5, global_pool="gem")
    assert isinstance(model.net.avgpool, GlobalPool)  # the global one (EfficientNet's SE blocks keep theirs)
    assert sum(isinstance(m, GlobalPool) for m in model.modules()) == 1
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert not any(isinstance(m, GlobalPool) for m in Grader(arch, 5).modules())


def _loader(n=16, size=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return DataLoader(TensorDataset(x, torch.arange(n) % 5), batch_size=8)


def _step(model, frozen):
    freeze_backbone(model, frozen)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    train_one_epoch(model, make_objective("classification"), opt, _loader(), torch.device("cpu"),
                    Normalize((0.5,) * 3, (0.25,) * 3), grader=model, frozen=frozen, progress=False)


@pytest.mark.parametrize("poison,named", [(float("nan"), "gradient norm nan"), (1e30, "gradient norm inf")])
def test_a_non_finite_gradient_stops_training_before_the_step(poison, named):
    """bf16 has no loss scaling: a NaN gradient, or one whose square overflows fp32 (AdamW's second moment
    would turn it into NaN weights), under a finite loss. Training stops loudly and the weights stay as they were."""
    torch.manual_seed(0)
    model = Grader("resnet18", 4, "linear")  # the ordinal objective's 4 cumulative logits
    before = {k: v.clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.net.layer4[0].conv1.weight.register_hook(lambda g: g * poison)
    with pytest.raises(Diverged, match=f"epoch 3/9: non-finite {named} at image 0; stopped before"):
        train_one_epoch(model, make_objective("ordinal"), opt, _loader(), torch.device("cpu"),
                        Normalize((0.5,) * 3, (0.25,) * 3), grader=model, frozen=False, progress=False,
                        desc="epoch 3/9")
    assert not opt.state  # no step taken
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())


def test_frozen_phase_changes_only_the_head_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model = Grader("resnet18", 5, "lab")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, frozen=True)
    after = model.state_dict()
    backbone = [k for k in before if not k.startswith("net.fc.")]
    assert any("running_mean" in k for k in backbone) and any("num_batches_tracked" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # parameters and BN buffers, bit for bit
    assert not torch.equal(before["net.fc.0.weight"], after["net.fc.0.weight"])
    _step(model, frozen=False)
    assert not torch.equal(before["net.conv1.weight"], model.state_dict()["net.conv1.weight"])
    assert not torch.equal(before["net.bn1.running_mean"], model.state_dict()["net.bn1.running_mean"])


@pytest.mark.parametrize("arch, pair_eyes", [("vit_b_16", False), ("resnet18", True)])
def test_frozen_means_only_the_head_trains(arch, pair_eyes):
    """Parameters held by the network itself (ViT's class token) freeze too; with eye pairing the head is the
    pair head, and the network's own classifier is gone."""
    model = Grader(arch, 5, pair_eyes=pair_eyes)
    freeze_backbone(model, True)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {f"{'pair_head' if pair_eyes else 'net.' + model.head_name}.{n}" for n, _ in
                      model.head.named_parameters()} and trains
    freeze_backbone(model, False)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("head", ["linear", "lab"])
def test_each_head_gives_the_objectives_outputs(head):
    """1 output for regression, 4 for ordinal, 9 for ordinal+ce, 5 for classification, with either head."""
    x = torch.randn(2, 3, 32, 32)
    for outputs in (1, 4, 5, 9):
        assert Grader("resnet18", outputs, head).eval()(x).shape == (2, outputs)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def _write_fake_weights(torch_home):
    """resnet18's ImageNet file as torchvision publishes it: made before BatchNorm's num_batches_tracked existed."""
    torch.manual_seed(1)
    state = {k: v for k, v in resnet18().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state, path


def test_densenet_imagenet_weights_load_under_their_published_names(torch_home):
    """DenseNet's files name layers norm.1 / conv.2 (dots torchvision no longer allows); torchvision renames them."""
    import re

    from torchvision.models import densenet121

    state = densenet121().state_dict()
    published = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()
                 if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in published
    path = torch_home / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    path.parent.mkdir(parents=True)
    torch.save(published, path)
    model, _ = build_model("densenet121", 5, pretrained=True, check_hash=False)
    assert torch.equal(model.net.features.denseblock1.denselayer1.norm1.weight,
                       state["features.denseblock1.denselayer1.norm1.weight"])


def test_pretrained_weights_load_through_the_torchvision_enum(torch_home):
    state, _ = _write_fake_weights(torch_home)
    model, origin = build_model("resnet18", 5, "lab", pretrained=True, check_hash=False)
    assert "ResNet18_Weights.IMAGENET1K_V1" in origin
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.net.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.net.fc[0].in_features == 512  # the head is new, not ImageNet's


def test_training_starts_from_the_imagenet_weights_of_its_tag(torch_home, synth_small, tmp_path, capsys):
    """``train --pretrained`` (the default) loads torchvision's file: after a frozen epoch the backbone is still
    ImageNet's, and the run says where it came from; ``--weights-tag`` picks which of the model's weights."""
    from retinopathy.cli.main import main
    from retinopathy.training.checkpoint import load_checkpoint

    state, _ = _write_fake_weights(torch_home)
    common = ["train", "--data", str(synth_small), "--image-size", "32", "--batch-size", "16", "--workers", "0",
              "--epochs", "1", "--freeze-epochs", "1", "--no-check-weights-hash", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "run")]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert "ResNet18_Weights.IMAGENET1K_V1" in ckpt["model_info"]["weights_origin"]
    for name in ("layer1.0.conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(ckpt["model"][f"net.{name}"], state[name])
    assert main([*common, "--weights-tag", "IMAGENET1K_V2", "--out", str(tmp_path / "v2")]) != 0
    assert "ResNet18_Weights has no 'IMAGENET1K_V2'; available: IMAGENET1K_V1" in capsys.readouterr().err


def test_pretrained_weights_adapt_to_space_to_depth(torch_home):
    state, _ = _write_fake_weights(torch_home)
    model, _ = build_model("resnet18", 5, pretrained=True, check_hash=False, space_to_depth=2)
    assert torch.equal(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    half = torch.randn(1, 3, 16, 16)
    blocky = half.repeat_interleave(2, 2).repeat_interleave(2, 3)  # each pixel a constant 2x2 block
    ours = model.net.conv1(model.stem(blocky))
    imagenet = nn.functional.conv2d(half, state["conv1.weight"], stride=2, padding=3)
    assert torch.allclose(ours, imagenet, atol=1e-5)  # ImageNet's filters, on the half-size image
    again = Grader("resnet18", 5, space_to_depth=2)
    again.load_backbone(model.net.state_dict())  # another space-to-depth run's weights (--weights): as they are
    assert torch.equal(again.net.conv1.weight, model.net.conv1.weight)


def test_pretrained_weights_load_around_a_gem_pooling(torch_home):
    state, _ = _write_fake_weights(torch_home)
    model, _ = build_model("resnet18", 5, pretrained=True, check_hash=False, global_pool="gem")
    assert torch.equal(model.net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert model.net.avgpool.p.item() == 3.0  # its own initial exponent: ImageNet has none


def test_pretrained_weights_hash_is_checked(torch_home):
    _, path = _write_fake_weights(torch_home)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    with pytest.raises(WeightsError) as e:
        build_model("resnet18", pretrained=True)
    assert "f37072fd" in str(e.value) and actual in str(e.value)


def test_missing_weights_give_the_offline_message(torch_home):
    with pytest.raises(WeightsError) as e:
        build_model("resnet50", pretrained=True)
    msg = str(e.value)
    for part in ("resnet50-0676ba61.pth", str(torch_home / "hub" / "checkpoints"),
                 "https://download.pytorch.org/models/resnet50-0676ba61.pth", "--weights FILE", "--no-pretrained"):
        assert part in msg


def test_weights_file_option(tmp_path):
    torch.manual_seed(2)
    state = resnet18().state_dict()
    torch.save(state, tmp_path / "mine.pth")
    model, origin = build_model("resnet18", weights_file=str(tmp_path / "mine.pth"))
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"]) and "mine.pth" in origin
    for name in ("mine-2.pth", "mine-20240105.pth"):  # no hash in the name (torch.hub's own pattern takes "2")
        torch.save(state, tmp_path / name)
        build_model("resnet18", weights_file=str(tmp_path / name))
    (tmp_path / "mine-2.pth").rename(tmp_path / "mine-0123abcd.pth")  # a hash that does not match
    with pytest.raises(WeightsError, match="mine-0123abcd.pth: SHA-256 starts with .* the file name says 0123abcd"):
        build_model("resnet18", weights_file=str(tmp_path / "mine-0123abcd.pth"))
    torch.save({"model": state, "epoch": 3}, tmp_path / "reference.pth")  # torchvision references' checkpoint
    model, _ = build_model("resnet18", weights_file=str(tmp_path / "reference.pth"))
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    averaged = torch.optim.swa_utils.AveragedModel(resnet18())  # its --model-ema: "module." keys, n_averaged
    torch.save({"model": state, "model_ema": averaged.state_dict()}, tmp_path / "reference-ema.pth")
    model, _ = build_model("resnet18", weights_file=str(tmp_path / "reference-ema.pth"))
    assert torch.equal(model.net.conv1.weight, averaged.module.conv1.weight)
    wrapped = {f"module.{k}": v for k, v in state.items()}  # a DDP-wrapped model's, in timm's checkpoint key
    torch.save({"state_dict": wrapped, "epoch": 9}, tmp_path / "timm.pth.tar")
    model, _ = build_model("resnet18", weights_file=str(tmp_path / "timm.pth.tar"))
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    torch.save({"model": torch.zeros(2), "state_dict": [1]}, tmp_path / "odd.pth")  # neither a state dict
    with pytest.raises(WeightsError, match="odd.pth: the weights do not fit resnet18: 100 backbone tensors missing"):
        build_model("resnet18", weights_file=str(tmp_path / "odd.pth"))
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="list.pth holds a list"):
        build_model("resnet18", weights_file=str(tmp_path / "list.pth"))
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth: the weights do not fit resnet18"):
        build_model("resnet18", weights_file=str(tmp_path / "bad.pth"))
    (tmp_path / "cut.pth").write_bytes((tmp_path / "mine.pth").read_bytes()[:1000])  # a half-copied file
    with pytest.raises(WeightsError, match=r"cut.pth cannot be read \(truncated, empty or not a PyTorch file\); "):
        build_model("resnet18", weights_file=str(tmp_path / "cut.pth"))
    torch.save(resnet34().state_dict(), tmp_path / "r34.pth")  # resnet18's tensors are all in it, the same shapes
    with pytest.raises(WeightsError, match=r"r34.pth: the weights do not fit resnet18: 96 of their backbone tensors "
                                           r"are not in it, e.g. \['layer1.2.conv1.weight'"):
        build_model("resnet18", weights_file=str(tmp_path / "r34.pth"))
    aux = googlenet(aux_logits=True, init_weights=False).state_dict()  # torchvision's file holds the auxiliary heads,
    torch.save(aux, tmp_path / "googlenet.pth")  # which the model it builds for training leaves out
    model, _ = build_model("googlenet", weights_file=str(tmp_path / "googlenet.pth"))
    assert torch.equal(model.net.conv1.conv.weight, aux["conv1.conv.weight"])
    gem = Grader("resnet18", 5, global_pool="gem").net.state_dict()  # another run's GeM exponent: not in avg's model
    torch.save(gem, tmp_path / "gem.pth")
    build_model("resnet18", weights_file=str(tmp_path / "gem.pth"))


def test_weights_file_can_be_a_retinopathy_checkpoint(tiny_run):
    """A run's checkpoint seeds another model's backbone (e.g. pretraining on the synthetic set); its head,
    here of another objective and width, is left out."""
    ckpt = torch.load(tiny_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    model, origin = build_model("resnet18", outputs=4, weights_file=str(tiny_run / "checkpoints" / "best.pt"))
    assert torch.equal(model.net.layer4[1].conv2.weight, ckpt["model"]["net.layer4.1.conv2.weight"])
    assert model.net.fc.out_features == 4 and "best.pt" in origin
    with pytest.raises(WeightsError, match="do not fit resnet50"):
        build_model("resnet50", weights_file=str(tiny_run / "checkpoints" / "best.pt"))


def test_weights_file_from_a_model_ema_run_gives_the_averaged_weights(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    averaged = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save({**ckpt, "model_ema": averaged}, tmp_path / "ema.pt")
    model, _ = build_model("resnet18", outputs=4, weights_file=str(tmp_path / "ema.pt"))
    assert torch.equal(model.net.layer4[1].conv2.weight, averaged["net.layer4.1.conv2.weight"])


def test_a_damaged_cached_imagenet_file_is_a_weights_error(torch_home):
    _, path = _write_fake_weights(torch_home)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="cannot be read .* delete the file"):
        build_model("resnet18", pretrained=True, check_hash=False)


def test_model_names_in_titles_are_written_as_their_papers_write_them():
    import torchvision
    from torchvision.models import list_models

    from retinopathy.models.restore import display_name

    names = {"resnet18": "ResNet18", "convnext_tiny": "ConvNeXt-Tiny", "efficientnet_b0": "EfficientNet-B0",
             "efficientnet_v2_s": "EfficientNet-V2-S", "vit_b_16": "ViT-B/16", "mobilenet_v2": "MobileNet-V2",
             "mobilenet_v3_small": "MobileNet-V3-Small", "shufflenet_v2_x0_5": "ShuffleNet-V2 x0.5",
             "mnasnet1_0": "MNASNet 1.0", "resnext50_32x4d": "ResNeXt-50 32x4d", "wide_resnet50_2": "Wide ResNet-50-2",
             "densenet121": "DenseNet-121", "regnet_y_1_6gf": "RegNetY-1.6GF", "swin_v2_t": "Swin-V2-T",
             "maxvit_t": "MaxViT-T", "vgg16_bn": "VGG16-BN", "squeezenet1_1": "SqueezeNet 1.1",
             "googlenet": "GoogLeNet", "my_net": "my_net"}
    assert {a: display_name(a) for a in names} == names
    assert all(display_name(a) != a for a in list_models(module=torchvision.models))  # every classifier

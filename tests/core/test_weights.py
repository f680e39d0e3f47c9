"""ouroboros_core.weights: finding, reading, strict loading, inspecting and converting files.

Everything runs on a toy component (no model knowledge in core): its module renames the
keys of an "old" checkpoint layout and lets one zero-initialised layer be absent.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ouroboros_core.components import ComponentConfig, ComponentSpec
from ouroboros_core.errors import WeightsError
from ouroboros_core import weights as W


class ToyConfig(ComponentConfig):
    width: int = 4


class Toy(nn.Module):
    """``body`` is the published part; ``extra`` an added layer that may be absent from files."""

    built_on: list[str] = []

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.body = nn.Linear(config.width, config.width)
        self.extra = nn.Linear(config.width, 2)
        Toy.built_on.append(self.body.weight.device.type)

    def convert_state_dict(self, sd):
        return {k.replace("old_body.", "body."): v for k, v in sd.items()}

    def allowed_missing(self, sd):
        return set() if any(k.startswith("extra.") for k in sd) else {"extra.weight", "extra.bias"}


SPEC = ComponentSpec(kind="reconstructor", name="toy", config=ToyConfig, factory=Toy, presets={"wide": {"width": 6}})


def _state(width: int = 4, prefix: str = "body.", extra: bool = True, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(width)
    sd = {f"{prefix}weight": torch.randn(width, width, generator=g), f"{prefix}bias": torch.randn(width, generator=g)}
    if extra:
        sd |= {"extra.weight": torch.randn(2, width, generator=g), "extra.bias": torch.randn(2, generator=g)}
    return {k: v.to(dtype) for k, v in sd.items()}


# ----------------------------------------------------------------------------- resolve_weights
def test_resolve_local_file_and_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    save_file(_state(), f)
    assert W.resolve_weights(str(f)) == f
    assert W.resolve_weights(str(tmp_path), "model.safetensors") == f
    assert W.resolve_weights(str(tmp_path)) == f  # the only weights file in the folder
    (tmp_path / "other.pth").write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"does not contain a single weights file \(found: model.safetensors, other.pth\)"):
        W.resolve_weights(str(tmp_path))
    with pytest.raises(WeightsError, match="does not contain 'recon_model.pth'"):
        W.resolve_weights(str(tmp_path), "recon_model.pth")


def test_resolve_missing_local_path(tmp_path):
    with pytest.raises(WeightsError, match="weights file or folder not found"):
        W.resolve_weights(str(tmp_path / "nope.safetensors"))
    with pytest.raises(WeightsError, match="not found"):
        W.resolve_weights("pretrained/model_fp16_fixrot.safetensors")  # a relative path, not a hub id


def test_resolve_hub_id_downloads_default_or_named_file(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename):
        calls.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert W.resolve_weights("ashawkey/LGM", "model_fp16_fixrot.safetensors") == tmp_path / "model_fp16_fixrot.safetensors"
    assert W.resolve_weights("huanngzh/Ouroboros3D-SVD-LGM:recon_model.pth", "ignored.bin").name == "recon_model.pth"
    assert calls == [("ashawkey/LGM", "model_fp16_fixrot.safetensors"), ("huanngzh/Ouroboros3D-SVD-LGM", "recon_model.pth")]
    with pytest.raises(WeightsError, match="write it as ashawkey/LGM:FILENAME"):
        W.resolve_weights("ashawkey/LGM")


def test_resolve_hub_offline_says_what_to_download(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, filename):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic has been disabled.")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError) as info:
        W.resolve_weights("ashawkey/LGM:model_fp16_fixrot.safetensors")
    msg = str(info.value)
    assert "could not get 'model_fp16_fixrot.safetensors' from hub repository 'ashawkey/LGM'" in msg
    assert "https://huggingface.co/ashawkey/LGM/resolve/main/model_fp16_fixrot.safetensors" in msg
    assert "set weights: to the local file path" in msg


# ----------------------------------------------------------------------------- read_state_dict
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_read_values_and_meta(tmp_path, suffix):
    sd = _state(dtype=torch.float16)
    path = tmp_path / f"w{suffix}"
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    got = W.read_state_dict(path)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    meta = W.read_state_dict(path, meta=True)
    assert {k: (v.device.type, v.dtype, tuple(v.shape)) for k, v in meta.items()} == {
        k: ("meta", torch.float16, tuple(v.shape)) for k, v in sd.items()
    }


def test_read_unwraps_nested_state_dict(tmp_path):
    sd = _state()
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.ckpt")
    assert set(W.read_state_dict(tmp_path / "ckpt.ckpt")) == set(sd)


class _NotATensor:  # pickled into a file: weights_only loading must refuse it
    pass


def test_read_refuses_pickled_objects_and_bad_files(tmp_path):
    torch.save({"w": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="evil.pth holds objects other than tensors"):
        W.read_state_dict(tmp_path / "evil.pth")
    save_file(_state(), tmp_path / "cut.safetensors")
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.safetensors"):
        W.read_state_dict(tmp_path / "cut.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(WeightsError, match="unsupported weights format '.npz'"):
        W.read_state_dict(tmp_path / "w.npz")


# ----------------------------------------------------------------------------- load_strict
def test_load_strict_loads_values():
    module, sd = Toy(ToyConfig()), _state()
    diff = W.load_strict(module, sd)
    assert diff.ok and torch.equal(module.body.weight, sd["body.weight"]) and torch.equal(module.extra.bias, sd["extra.bias"])


def test_load_strict_names_every_kind_of_problem():
    module = Toy(ToyConfig())
    sd = _state(extra=False)
    sd["body.bias"] = torch.zeros(5)
    sd |= {f"stray.{i}": torch.zeros(1) for i in range(7)}
    before = module.body.weight.clone()
    with pytest.raises(WeightsError) as info:
        W.load_strict(module, sd, source="w.pth")
    msg = str(info.value)
    assert "weights w.pth do not match Toy" in msg
    assert "missing 2 key(s): extra.weight, extra.bias" in msg
    assert "unexpected 7 key(s): stray.0, stray.1, stray.2, stray.3, stray.4, ... and 2 more" in msg
    assert "1 shape mismatch(es): body.bias (file [5] vs model [4])" in msg
    assert torch.equal(module.body.weight, before)  # nothing half-loaded


def test_load_strict_allowed_missing_prefix_or_predicate():
    sd = _state(extra=False)
    for allow in (("extra.",), lambda k: k.startswith("extra")):
        module = Toy(ToyConfig())
        extra_before = module.extra.weight.clone()
        diff = W.load_strict(module, sd, allow)
        assert diff.allowed_missing == ["extra.weight", "extra.bias"]
        assert torch.equal(module.extra.weight, extra_before) and torch.equal(module.body.bias, sd["body.bias"])


# ----------------------------------------------------------------------------- inspect / convert
def test_inspect_file_on_meta_with_conversion(tmp_path):
    path = tmp_path / "old.pth"
    torch.save(_state(prefix="old_body.", extra=False), path)
    Toy.built_on.clear()
    report = W.inspect_file(path, SPEC)
    assert Toy.built_on == ["meta"]  # the component was never allocated
    assert report.ok, report.format()
    assert report.diff.allowed_missing == ["extra.weight", "extra.bias"]
    text = report.format()
    assert "2 tensors, 20 values, dtype float32" in text and "OK, loads strictly" in text
    assert "keep their initial values: extra.weight, extra.bias" in text


def test_inspect_file_reports_missing_key_and_preset(tmp_path):
    sd = _state(width=6)
    del sd["body.bias"]
    save_file(sd, tmp_path / "w.safetensors")
    report = W.inspect_file(tmp_path / "w.safetensors", SPEC, preset="wide")
    assert not report.ok
    assert "missing 1 key(s): body.bias" in report.format() and "does NOT load" in report.format()
    assert not W.inspect_file(tmp_path / "w.safetensors", SPEC).ok  # width 4: every shape differs
    with pytest.raises(WeightsError, match="has no preset 'huge'"):
        W.inspect_file(tmp_path / "w.safetensors", SPEC, preset="huge")


def test_convert_file_writes_safetensors_with_component_names(tmp_path):
    src = tmp_path / "old.pth"
    sd = _state(prefix="old_body.", dtype=torch.float16)
    torch.save(sd, src)
    out = W.convert_file(src, tmp_path / "out" / "toy.safetensors", SPEC)
    assert sorted(os.listdir(out.parent)) == ["toy.safetensors"]  # no temporary file left
    with safe_open(str(out), framework="pt") as f:  # read back by safetensors itself
        assert f.metadata()["component"] == "toy"
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert set(got) == {"body.weight", "body.bias", "extra.weight", "extra.bias"}
    assert got["body.weight"].dtype == torch.float16 and torch.equal(got["body.weight"], sd["old_body.weight"])
    module = Toy(ToyConfig())
    W.load_strict(module, W.read_state_dict(out))  # the converted file loads strictly


def test_convert_file_refuses_mismatch_and_writes_nothing(tmp_path):
    torch.save({"body.weight": torch.zeros(4, 4)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="missing 1 key"):
        W.convert_file(tmp_path / "bad.pth", tmp_path / "bad.safetensors", SPEC)
    assert not (tmp_path / "bad.safetensors").exists()
    with pytest.raises(WeightsError, match="must end in .safetensors"):
        W.convert_file(tmp_path / "bad.pth", tmp_path / "bad.bin", SPEC)


# ----------------------------------------------------------------------------- shape-only mismatch
def _shape_only_mismatch(tmp_path, suffix=".safetensors"):
    """Every key the module expects, no extra key, but ``body.bias`` has 5 values instead of 4."""
    sd = _state()
    sd["body.bias"] = torch.arange(5.0)
    path = tmp_path / f"reshaped{suffix}"
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_shape_only_mismatch_is_refused_by_inspect_convert_and_loading(tmp_path, suffix):
    path = _shape_only_mismatch(tmp_path, suffix)
    report = W.inspect_file(path, SPEC)
    assert not report.diff.missing and not report.diff.unexpected  # the names all match
    text = report.format()
    assert not report.ok, f"inspect must refuse a file whose shapes differ (it said:\n{text})"
    assert "1 shape mismatch(es): body.bias (file [5] vs model [4])" in text and text.endswith("does NOT load")

    out = tmp_path / "out" / "converted.safetensors"
    with pytest.raises(WeightsError, match=r"body.bias \(file \[5\] vs model \[4\]\)"):
        W.convert_file(path, out, SPEC)
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir())), "convert wrote a file for mismatched shapes"

    module = Toy(ToyConfig())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(WeightsError, match=r"shape mismatch\(es\): body.bias \(file \[5\] vs model \[4\]\)"):
        W.load_file(module, path)  # our error naming the key and both shapes, not torch's RuntimeError
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # nothing half-loaded


def test_cli_weights_commands_refuse_a_shape_only_mismatch(tmp_path, capsys, toy_registry, toy_plugin_cls, monkeypatch):
    from ouroboros_core import registry as registry_module
    from ouroboros_core.cli import main

    toy_registry.add_plugin(toy_plugin_cls([SPEC]), name="weights-toy", distribution="weights-toy", version="1.0")
    monkeypatch.setattr(registry_module, "_default", toy_registry)
    path = _shape_only_mismatch(tmp_path)
    code = main(["weights", "inspect", str(path), "--component", "toy"])
    out = capsys.readouterr().out
    assert code == 1, f"weights inspect must exit 1 on a shape mismatch, got {code}:\n{out}"
    assert "body.bias (file [5] vs model [4])" in out and "does NOT load" in out
    target = tmp_path / "converted.safetensors"
    code = main(["weights", "convert", str(path), "-o", str(target), "--component", "toy"])
    err = capsys.readouterr().err
    assert code != 0 and "body.bias (file [5] vs model [4])" in err
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_protocol_is_optional():
    plain = nn.Linear(2, 2)
    sd = {"weight": torch.zeros(2, 2)}
    assert W.convert_for(plain, sd) is sd and W.allowed_missing_for(plain, sd) == set()
    assert isinstance(Toy(ToyConfig()), W.SupportsWeightConversion) and not isinstance(plain, W.SupportsWeightConversion)


def test_check_available_fails_fast_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from ouroboros_core.weights import check_available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError) as info:
        check_available("owner/repo:model.safetensors", where="my.yaml: reconstructor.weights")
    text = str(info.value)
    assert text.startswith("1 weights source is not available. Not in the local Hugging Face cache and the hub cannot be reached (offline): my.yaml: reconstructor.weights = owner/repo:model.safetensors (fix:")
    assert "hf download owner/repo model.safetensors`" in text
    # a cached snapshot, or a local file, is enough
    snap = tmp_path / "hub" / "models--owner--repo" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"")
    check_available("owner/repo:model.safetensors")
    check_available("owner/repo")
    local = tmp_path / "w.safetensors"
    local.write_bytes(b"")
    check_available(str(local))
    with pytest.raises(WeightsError, match="not found"):
        check_available(str(tmp_path / "missing.pth"))


# ----------------------------------------------------------------------------- NaN / Inf values
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_inspect_and_load_refuse_nonfinite_values(tmp_path, suffix):
    sd = _state()
    sd["body.bias"][1] = float("nan")
    sd["extra.weight"][0, 0] = float("inf")
    path = tmp_path / f"model{suffix}"
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    report = W.inspect_file(path, SPEC)
    assert not report.ok and report.diff.ok
    assert report.nonfinite == ["body.bias", "extra.weight"]
    assert "problem:   2 tensor(s) hold NaN or infinite values: body.bias, extra.weight" in report.format()
    assert report.format().endswith("does NOT load")
    module = Toy(ToyConfig())
    before = module.body.bias.detach().clone()
    with pytest.raises(WeightsError, match=r"hold NaN or infinite values in 2 tensor\(s\): body.bias, extra.weight"):
        W.load_file(module, path)
    assert torch.equal(module.body.bias, before)  # nothing was loaded

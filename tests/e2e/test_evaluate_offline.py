"""evaluate without internet: a missing LPIPS backbone is one line, before anything is generated."""

from __future__ import annotations

import urllib.error

import pytest
import torch.hub

pytest.importorskip("lpips")
pytest.importorskip("torchvision")

from ouroboros_core.cli import main
from ouroboros_core.pipeline import ImageTo3DPipeline


def test_offline_lpips_backbone_is_one_line_before_generating(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    built = []
    monkeypatch.setattr(ImageTo3DPipeline, "from_recipe", classmethod(lambda *a, **k: built.append(1)))
    target = tmp_path / "metrics.json"
    assert main(["evaluate", "--recipe", "tiny", "--limit", "1", "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("error: LPIPS backbone 'alex' needs torchvision's ImageNet weights alexnet-owt-7be5be79.pth")
    assert "Temporary failure in name resolution" in err
    assert "--lpips none" in err and f"{tmp_path / 'torch' / 'hub' / 'checkpoints'}/" in err
    assert built == [] and not target.exists()

"""`bench weights`: what a config needs, and a clear offline error (no network in tests)."""

from __future__ import annotations

import argparse

import huggingface_hub.constants


def _args(action: str, model: str | None, metrics: str | None) -> argparse.Namespace:
    return argparse.Namespace(action=action, model=model, metrics=metrics, dry_run=False, data=[])


def test_needs_for_sd14_and_default_metrics():
    from bench.commands.weights import needs_for

    needs = needs_for(["sd14"], "default")
    whats = [n.what for n in needs]
    assert whats[0].startswith("Hugging Face repo 'CompVis/stable-diffusion-v1-4'")
    assert any("openai/clip-vit-base-patch16" in w for w in whats)  # StyleDiffusion's image encoder
    assert sum("LPIPS-alex" in w for w in whats) == 1  # shared by lpips_alex, ns_lpips_*, recon_lpips
    assert any("LPIPS-vgg" in w for w in whats)
    assert any("open_clip 'ViT-L-14'" in w for w in whats)
    assert any("open_clip 'ViT-B-32'" in w for w in whats)  # clipscore_hessel (StyleDiffusion's Clipscore %)
    assert any("timm 'vit_base_patch8_224.dino'" in w for w in whats)
    assert len(needs) == 7
    assert needs_for(["tiny_random", "toy"], None) == []  # built in code / committed


def test_fetch_offline_fails_with_a_clear_message(tmp_path, monkeypatch, capsys):
    from bench.commands.weights import run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    assert run(_args("fetch", None, "pie_bench")) == 1
    err = capsys.readouterr().err
    assert "cannot download LPIPS-squeeze" in err and "offline" in err and "bench weights fetch" in err
    assert str(tmp_path / "torch") in err

    assert run(_args("list", None, "pie_bench")) == 0  # list never downloads and does not fail
    out = capsys.readouterr().out
    assert "missing; searched" in out and "openai/clip-vit-large-patch14" in out
    # without --model, list covers every hub model (sd14, sd15) and nothing built in code or committed
    assert "CompVis/stable-diffusion-v1-4" in out and "stable-diffusion-v1-5" in out and "tiny_random" not in out


def test_cli_registers_the_command():
    from bench.commands import weights

    parser = argparse.ArgumentParser()
    weights.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["weights", "fetch", "--model", "sd14", "--metrics", "toy", "--data", "ef_examples"])
    assert args.func is weights.run and args.model == "sd14" and args.metrics == "toy"
    assert args.data == ["ef_examples"]

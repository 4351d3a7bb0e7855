"""Method presets are the references' runs (issue 14): dataclass defaults = YAML presets (one source of
truth), the corrected paper-experiment values, the new P2P options they use, and SDEdit's posterior sample."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess

import pytest
import torch
import yaml
from conftest import REPO_ROOT, compose_config
from omegaconf import OmegaConf

from bench.config import CONF_DIR
from bench.data.item import EditItem
from bench.job_parts import method_from_config
from methods.base import HyperparameterError
from methods.p2p import AttentionRefine, AttentionReplace, AttentionReweight, P2PEditHparams, word_token_indices
from methods.sdedit import SDEdit

METHOD_DIR = CONF_DIR / "method"
HOME_PRESETS = sorted(p for p in METHOD_DIR.glob("*.yaml") if "_target_" in yaml.safe_load(p.read_text()))


def own_values(path) -> dict:
    """The preset's hyperparameters (interpolations resolved, `defaults`/`_target_` dropped)."""
    data = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in ("defaults", "_target_")}
    return OmegaConf.to_container(OmegaConf.create(data), resolve=True)


def plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("path", HOME_PRESETS, ids=[p.stem for p in HOME_PRESETS])
def test_dataclass_defaults_equal_the_yaml_preset(path):
    """Finding 8: each method class's defaults are its home preset's values, field by field, and the preset
    names every field (so neither can drift from the other)."""
    module, _, name = yaml.safe_load(path.read_text())["_target_"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert cls.name == path.stem
    values = own_values(path)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(values) == set(fields), f"{path.name}: keys {sorted(set(values) ^ set(fields))} differ from {cls}"
    for key, field in fields.items():
        assert plain(field.default) == values[key], f"{cls.__name__}.{key}={field.default!r} but {path.name}: {values[key]!r}"


def composed_method(tmp_path, *overrides: str) -> dict:
    cfg = compose_config(list(overrides), tmp_path)
    return method_from_config(cfg.method)[0].hparams()


def test_nti_and_ddim_p2p_replace_self_attention_up_to_32(tmp_path):
    """Finding 2: the NTI notebook copies replace self-attention on maps ≤ 32²; the EF copy keeps 16²."""
    assert composed_method(tmp_path, "method=null_text_p2p")["self_replace_max_resolution"] == 32
    assert composed_method(tmp_path, "method=ddim_p2p")["self_replace_max_resolution"] == 32
    assert composed_method(tmp_path, "method=ddim_p2p_ef")["self_replace_max_resolution"] == 16
    table = composed_method(tmp_path, "experiment=stylediffusion_table", "method=null_text_p2p")
    assert table["self_replace_max_resolution"] == 32


PIE = ["experiment=pie_bench_table"]


@pytest.mark.parametrize("option", ["ddim_p2p", "null_text_p2p"])
def test_pie_bench_p2p_runs_as_pnpinversion(option, tmp_path):
    """Finding 3: refine always, LocalBlend and ×2 reweight from the item's blend words, cross .4 / self .6 ≤ 32²."""
    hp = composed_method(tmp_path, *PIE, f"+experiment/pie_bench@_global_={option}")
    assert (hp["p2p_mode"], hp["local_blend"], hp["reweight"]) == ("refine", "if_available", "if_available")
    assert (hp["cross_replace_steps"], hp["self_replace_steps"], hp["self_replace_max_resolution"]) == (0.4, 0.6, 32)
    assert (hp["num_steps"], hp["guidance_scale"], hp["blend_start"], hp["blend_threshold"]) == (50, 7.5, 0.2, 0.3)


def test_pie_bench_stylediffusion_and_ef_p2p_presets(tmp_path):
    """Finding 3: StyleDiffusion's character-length rule; the EF+P2P script's T 50 / skip 12 / CFG 1, 7.5 / .4, .6."""
    sd = composed_method(tmp_path, *PIE, "+experiment/pie_bench@_global_=stylediffusion_p2plus")
    assert (sd["p2p_mode"], sd["local_blend"], sd["reweight"], sd["num_steps"]) == ("auto_chars", False, False, 50)
    ef = composed_method(tmp_path, *PIE, "+experiment/pie_bench@_global_=ef_ddpm_p2p")
    assert {k: ef[k] for k in ("num_steps", "skip", "inversion_guidance_scale", "source_guidance_scale",
                               "guidance_scale", "cross_replace_steps", "self_replace_steps", "eta")} == {
        "num_steps": 50, "skip": 12, "inversion_guidance_scale": 1.0, "source_guidance_scale": 1.0,
        "guidance_scale": 7.5, "cross_replace_steps": 0.4, "self_replace_steps": 0.6, "eta": 1.0}


def test_stylediffusion_default_is_its_cli_with_blend_and_reweight(tmp_path):
    """Finding 4: the reference CLI always builds LocalBlend and AttentionReweight."""
    hp = composed_method(tmp_path, "experiment=stylediffusion_table", "method=stylediffusion_p2plus")
    assert (hp["local_blend"], hp["reweight"], hp["blend_start"]) == (True, True, 0.2)


def test_ddim_p2p_ef_has_the_quirk_switch_off_by_default(tmp_path):
    """Finding 5: textbook P2P by default; the reference's call pattern on request."""
    assert composed_method(tmp_path, "method=ddim_p2p_ef")["reference_quirks"] is False
    assert composed_method(tmp_path, "method=ddim_p2p_ef", "method.reference_quirks=true")["reference_quirks"] is True


# ---- the P2P options the presets use ------------------------------------------------------------


class Hparams(P2PEditHparams):
    def __init__(self, **values):
        for f in dataclasses.fields(P2PEditHparams):
            setattr(self, f.name, values.get(f.name, f.default))
        self.check_p2p_hparams()


def item(source: str, target: str, blend=None, extra=None) -> EditItem:
    return EditItem("i", "i", "unused.png", source, target, blend_words=blend, extra=extra or {})


def test_auto_chars_compares_character_counts_not_words(tiny_pipe):
    replace = Hparams(p2p_mode="auto_chars").p2p_controller(tiny_pipe, item("a cat sat", "a dog sat"), 4)
    assert isinstance(replace.mapping, AttentionReplace)
    refine = Hparams(p2p_mode="auto_chars").p2p_controller(tiny_pipe, item("a cat sat", "a lion sat"), 4)
    assert isinstance(refine.mapping, AttentionRefine)  # same word count, different lengths: 'auto' would replace
    with pytest.raises(ValueError, match="different word counts"):  # equal lengths, 3 vs 2 words
        Hparams(p2p_mode="auto_chars").p2p_controller(tiny_pipe, item("a bc cat", "abcd cat"), 4)


def test_reweight_defaults_to_twice_the_target_blend_word(tiny_pipe):
    blended = item("a cat sat", "a dog sat", blend=("cat", "dog"))
    controller = Hparams(reweight=True, p2p_mode="refine").p2p_controller(tiny_pipe, blended, 4)
    assert isinstance(controller.mapping, AttentionReweight) and isinstance(controller.mapping.base, AttentionRefine)
    expected = torch.ones(77)
    expected[word_token_indices(tiny_pipe.tokenizer, "a dog sat", "dog")] = 2.0  # ×2 on 'dog', 1 elsewhere
    assert torch.equal(controller.mapping.equalizers[0], expected)
    explicit = item("a cat sat", "a dog sat", blend=("cat", "dog"), extra={"eq_params": {"words": ["sat"], "values": [3]}})
    expected = torch.ones(77)
    expected[word_token_indices(tiny_pipe.tokenizer, "a dog sat", "sat")] = 3.0  # the item's own eq_params win
    assert torch.equal(Hparams(reweight=True).p2p_controller(tiny_pipe, explicit, 4).mapping.equalizers[0], expected)


def test_if_available_skips_items_without_blend_words_and_true_fails(tiny_pipe):
    bare = item("a cat sat", "a dog sat")
    controller = Hparams(local_blend="if_available", reweight="if_available").p2p_controller(tiny_pipe, bare, 4)
    assert controller.local_blend is None and isinstance(controller.mapping, AttentionReplace)
    with_words = item("a cat sat", "a dog sat", blend=("cat", "dog"))
    assert Hparams(local_blend="if_available").p2p_controller(tiny_pipe, with_words, 4).local_blend is not None
    with pytest.raises(ValueError, match="no blend_words"):
        Hparams(local_blend=True).p2p_controller(tiny_pipe, bare, 4)
    with pytest.raises(ValueError, match="nor blend_words"):
        Hparams(reweight=True).p2p_controller(tiny_pipe, bare, 4)
    with pytest.raises(HyperparameterError, match="local_blend='maybe'"):
        Hparams(local_blend="maybe")


# ---- SDEdit (finding 6) --------------------------------------------------------------------------


def test_sdedit_encodes_a_posterior_sample_from_the_generator(tiny_pipe, source_image):
    image = source_image
    mean = SDEdit(encode_sample=False).invert(tiny_pipe, image, "", torch.Generator().manual_seed(0)).tensors["x0"]
    assert torch.equal(mean, tiny_pipe.encode_image(image))
    draw = [SDEdit().invert(tiny_pipe, image, "", torch.Generator().manual_seed(s)).tensors["x0"] for s in (0, 0, 1)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])  # the job's generator decides
    posterior = tiny_pipe.vae.encode(image.to(tiny_pipe.vae.dtype)).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(0))
    expected = (posterior.mean + posterior.std * eps) * tiny_pipe.vae.config.scaling_factor
    torch.testing.assert_close(draw[0], expected.to(draw[0].dtype))
    assert "encode_sample" in SDEdit.inversion_fields  # sample and mean are different cache entries


# ---- no document outside the repository is cited --------------------------------------------------


def test_no_spec_section_citations_anywhere():
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile("spec " + "§")  # split so this file does not match itself
    hits = [f for f in files if (REPO_ROOT / f).suffix in {".py", ".yaml", ".md", ".csv", ".txt", ""}
            and (REPO_ROOT / f).is_file() and pattern.search((REPO_ROOT / f).read_text(errors="ignore"))]
    assert hits == []


# ---- 8-bit conversion of edits (finding 7) ---------------------------------------------------------


def test_edits_are_saved_with_the_references_truncation_sources_round_trip():
    import numpy as np

    from bench.data.preprocess import from_pil
    from bench.images import to_pil

    values = torch.tensor([-1.0, -0.999, 0.0, 0.0039, 0.5, 0.99, 1.0])
    image = values.view(1, 1, -1).expand(3, 1, -1)
    saved = np.asarray(to_pil(image, truncate=True))[0, :, 0]
    expected = ((values.numpy() / 2 + 0.5).clip(0, 1) * 255).astype(np.uint8)  # the references' latent2image
    assert saved.tolist() == expected.tolist() == [0, 0, 127, 127, 191, 253, 255]
    assert np.asarray(to_pil(image))[0, :, 0].tolist() == [0, 0, 128, 128, 191, 254, 255]  # rounding differs
    every_byte = torch.arange(256, dtype=torch.uint8).view(1, 1, -1).expand(3, 1, -1).permute(1, 2, 0).numpy()
    source = from_pil(__import__("PIL.Image", fromlist=["Image"]).fromarray(np.ascontiguousarray(every_byte)))
    assert np.asarray(to_pil(source)).tobytes() == np.ascontiguousarray(every_byte).tobytes()  # sources stay exact


# ---- the PIE-Bench re-run presets end to end (acceptance 3) ------------------------------------------


@pytest.mark.parametrize("option,extra", [("ddim_p2p", []), ("stylediffusion_p2plus", ["method.num_inner_steps=2"])])
def test_pie_bench_presets_run_on_items_with_and_without_blend_words(option, extra, tmp_path):
    """`bench experiment=pie_bench_table debug=limit` with the P2P-family presets on the PIE-Bench stand-in: one
    item with blend words (LocalBlend + ×2 reweight), one without ('if_available' runs it plain)."""
    from test_experiments import stand_in_data

    from bench.runner import run_from_config

    data = [o for o in stand_in_data("pie_bench", tmp_path) if not o.startswith("metrics.ids")]
    cfg = compose_config(["experiment=pie_bench_table", "debug=limit", f"+experiment/pie_bench@_global_={option}",
                          "method.num_steps=4", "metrics.ids=[]", *extra, *data], tmp_path / "results")
    summary = run_from_config(cfg)
    assert summary.ok == 2, summary.failures


@pytest.mark.filterwarnings("ignore:User provided device_type of 'cuda'")  # building the context on a CPU machine
def test_reference_precision_is_opt_in_cuda_autocast_and_part_of_the_identity(tiny_pipe):
    from contextlib import nullcontext

    from bench.models import resolve_dtype
    from methods.steps import reference_autocast

    assert resolve_dtype("reference") == torch.float32
    assert isinstance(reference_autocast(tiny_pipe), nullcontext)  # float32 run: no autocast
    tiny_pipe.reference_precision = True
    try:
        assert isinstance(reference_autocast(tiny_pipe), nullcontext)  # CPU: the references' autocast was CUDA-only
        assert tiny_pipe.identity()["dtype"] == "float32+reference-autocast"  # other cache keys than plain fp32
        tiny_pipe.device = torch.device("cuda")
        context = reference_autocast(tiny_pipe)
        assert isinstance(context, torch.autocast) and context.fast_dtype == torch.float16
    finally:
        tiny_pipe.reference_precision, tiny_pipe.device = False, torch.device("cpu")

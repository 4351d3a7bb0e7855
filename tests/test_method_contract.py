"""The Method contract, checked for every method config the registry holds (conf/method/*.yaml and the
user config dirs, discovered, not listed) on the tiny pipeline with shortened schedules; the checks live
in tests/method_contract.py, the fixtures in tests/conftest.py."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from method_contract import STEPS, check_contract, check_output_and_seeds, method_spec

from bench.config import USER_CONFIG_ENV, group_options
from bench.perf.setup import MethodSpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("label", group_options("method"))
def test_method_contract(label, contract_pipe, contract_item, tmp_path):
    item, image = contract_item
    check_contract(contract_pipe, method_spec(label), item, image, tmp_path)


def test_a_method_that_keeps_its_processors_fails(contract_pipe, contract_item, tmp_path):
    """Removing a required behaviour makes the contract fail: processors installed without ``finally``."""
    from methods.negative_prompt_p2p import NegativePromptP2P
    from methods.p2p import ControlledAttnProcessor, attention_layers

    @dataclasses.dataclass
    class LeakyP2P(NegativePromptP2P):
        name = "leaky_p2p"

        def edit(self, pipe, inversion, item, generator):
            layers = attention_layers(pipe.unet)
            controller = self.p2p_controller(pipe, item, self.num_steps)
            controller.bind(layers)
            pipe.unet.set_attn_processor({n: ControlledAttnProcessor(controller, layers[n]) for n in layers})
            return pipe.decode_latents(self.edit_latents(pipe, inversion, item))[-1]  # never restored

    item, image = contract_item
    original = dict(contract_pipe.unet.attn_processors)
    spec = MethodSpec("leaky_p2p", LeakyP2P(num_steps=STEPS), method_spec("negative_prompt_p2p").scheduler_cfg, {})
    try:
        with pytest.raises(AssertionError, match="not restored"):
            check_contract(contract_pipe, spec, item, image, tmp_path)
    finally:
        contract_pipe.unet.set_attn_processor(original)


def test_a_method_that_hides_its_seed_dependence_fails(contract_pipe, contract_item):
    """A method whose output depends on the seed but declares stochastic=False breaks the contract."""
    from methods.ddim import DDIM

    @dataclasses.dataclass
    class NoisyDDIM(DDIM):
        name = "noisy_ddim"

        def edit(self, pipe, inversion, item, generator):
            image = super().edit(pipe, inversion, item, generator)
            return (image + 0.01 * torch.randn(image.shape, generator=generator)).clamp(-1, 1)

    item, image = contract_item
    with pytest.raises(AssertionError, match="stochastic=False"):
        check_output_and_seeds(contract_pipe, NoisyDDIM(num_steps=STEPS), item, image)


USER_MODULE = '''
from dataclasses import dataclass, replace

from methods.ddim import DDIM


@dataclass
class SourcePromptDDIM(DDIM):
    """DDIM that edits with the source prompt (a reconstruction): a method living outside the package."""

    name = "source_prompt_ddim"
    version = "1"

    def edit_latents(self, pipe, inversion, item):
        return super().edit_latents(pipe, inversion, replace(item, target_prompt=item.source_prompt))
'''


def test_a_config_in_a_user_config_dir_is_covered(contract_pipe, contract_item, tmp_path, monkeypatch, request):
    """A YAML + module dropped into $EDITBENCH_CONFIG_DIR joins the registry and passes the same checks."""
    user = tmp_path / "user-conf"
    (user / "method").mkdir(parents=True)
    (user / "contract_user_methods.py").write_text(USER_MODULE, encoding="utf-8")
    (user / "method" / "source_prompt_ddim.yaml").write_text(
        "# DDIM that reconstructs (user config dir)\ndefaults:\n  - /scheduler@scheduler: ddim_sd_offset0\n\n"
        "_target_: contract_user_methods.SourcePromptDDIM\nnum_steps: 50\n", encoding="utf-8")
    monkeypatch.setenv(USER_CONFIG_ENV, str(user))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the user dir joins sys.path for this test only
    request.addfinalizer(lambda: sys.modules.pop("contract_user_methods", None))
    assert "source_prompt_ddim" in group_options("method")
    item, image = contract_item
    spec = method_spec("source_prompt_ddim")
    assert type(spec.method).__module__ == "contract_user_methods"
    check_contract(contract_pipe, spec, item, image, tmp_path / "results")
    monkeypatch.delenv(USER_CONFIG_ENV)
    assert "source_prompt_ddim" not in group_options("method")

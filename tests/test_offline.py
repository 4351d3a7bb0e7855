"""The suite never reaches a model hub: with HF_HUB_OFFLINE set, a hub download must fail fast."""

import os

import pytest


def test_hub_is_offline_in_tests():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    from huggingface_hub import constants, hf_hub_download

    assert constants.HF_HUB_OFFLINE  # the client read the flag at import
    with pytest.raises(Exception) as info:
        hf_hub_download("CompVis/stable-diffusion-v1-4", "model_index.json", revision="main")
    assert "offline" in str(info.value).lower() or "local" in str(info.value).lower()

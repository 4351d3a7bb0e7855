"""clipscore_hessel against an independent computation of CLIP-S (jmhessel/clipscore@459f821 clipscore.py):
"A photo depicts " + caption, bicubic resize + centre crop + CLIP mean/std, w·max(cos, 0) with w = 2.5."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from metrics_helpers import TINY_CLIP_NAME, write_tiny_open_clip
from PIL import Image
from test_metrics import make_input


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_open_clip(tmp_path_factory.mktemp("clip"))


def reference_cosines(config, checkpoint, batch, prefix="A photo depicts") -> torch.Tensor:
    import open_clip
    from torchvision import transforms

    open_clip.add_model_config(config)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=str(checkpoint)).eval()
    prep = transforms.Compose([transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(32), transforms.ToTensor(),
                               transforms.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)])
    pils = [Image.fromarray(((b.edited + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()) for b in batch]
    captions = [f"{prefix} {b.item.target_prompt.replace('[', '').replace(']', '')}" for b in batch]
    with torch.no_grad():
        img = model.encode_image(torch.stack([prep(p) for p in pils]))
        txt = model.encode_text(open_clip.get_tokenizer(TINY_CLIP_NAME)(captions))
    return F.cosine_similarity(img, txt, dim=-1)


def test_clipscore_hessel_is_w_times_clipped_cosine_with_the_caption_prefix(tiny_clip):
    from bench.metrics.clip_metrics import ClipScore
    from bench.metrics.clipscore_hessel import ClipScoreHessel

    config, checkpoint = tiny_clip
    kwargs = dict(model=TINY_CLIP_NAME, pretrained=None, checkpoint=str(checkpoint), model_config=str(config))
    batch = [make_input(s, target_prompt=p) for s, p in enumerate(["a [red] cat", "a dog", "a house", "snow", "a car"])]
    metric = ClipScoreHessel(**kwargs)
    cosines = metric.cosines(batch)
    torch.testing.assert_close(cosines, reference_cosines(config, checkpoint, batch), atol=1e-6, rtol=0)
    plain = torch.tensor(ClipScore(**kwargs).score(batch)) / 100  # the same images, captions without the prefix
    assert not torch.allclose(cosines, plain, atol=1e-4)  # the prefix reaches the text encoder
    # CLIP-S = w·max(cos, 0): random weights give cosines of both signs only by chance, so check the formula on
    # these cosines and on their negation (the clip at 0 must zero exactly the negative ones)
    for sign in (1.0, -1.0):
        metric.cosines = lambda b, c=sign * cosines: c
        assert metric.score(batch) == pytest.approx([2.5 * max(float(c), 0.0) for c in sign * cosines], rel=1e-6)
        half = ClipScoreHessel(**kwargs, w=1.25)
        half.cosines = metric.cosines
        assert half.score(batch) == pytest.approx([1.25 * max(float(c), 0.0) for c in sign * cosines], rel=1e-6)
    assert ClipScoreHessel(**kwargs, w=1.25).unit == "1.25·max(cos, 0)" and ClipScoreHessel.unit == "2.5·max(cos, 0)"
    with pytest.raises(ValueError, match="positive weight"):
        ClipScoreHessel(**kwargs, w=0)

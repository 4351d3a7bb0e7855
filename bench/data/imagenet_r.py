"""Modified ImageNet-R-TI2I: the 30 Plug-and-Play ImageNet-R images × 5 target prompts (150 pairs).

The manifest ``datasets/imagenet_r_ti2i/manifest.yaml`` is generated from the PnP prompt file with
source prompts added (``imnetr-ti2i-source-prompt.yaml``) by ``build_manifest`` below
(``python -m bench.data.imagenet_r <yaml> <out>``). Images come from the ImageNet-R tarball:
``/ImageNetR-TI2I/<class>/<rendition>_<k>.jpg`` → member ``imagenet-r/<wnid>/<rendition>_<k>.jpg``.

Every prompt in the file has the form "a|an <rendition> of a|an <class>". Edits that keep the class are
category ``rendition``; edits that change the class too are ``rendition+class``. Blend words (for P2P
local blending) come from the prompt difference: the class words when the class changes (the object
is what a local blend should localise), otherwise the rendition words. Articles are ignored.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path, PurePosixPath

import yaml

from bench.data.manifest import ManifestDataset, ManifestError

IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"

# PnP class folder → (WordNet id, ImageNet synset words). All ten ids were checked against
# `imagenet_r_wnids` (the 200 ImageNet-R classes) in hendrycks/imagenet-r eval.py @ 44d3a1d, and the
# synset words against the ImageNet-1k synset list. Each id is the only ImageNet-R class for its PnP
# class name (e.g. tabby is the only domestic-cat class in ImageNet-R; red panda is not in it).
CLASS_WNIDS: dict[str, tuple[str, str]] = {
    "goldfish": ("n01443537", "goldfish, Carassius auratus"),
    "hummingbird": ("n01833805", "hummingbird"),
    "penguin": ("n02056570", "king penguin, Aptenodytes patagonica"),
    "husky": ("n02110185", "Siberian husky"),
    "cat": ("n02123045", "tabby, tabby cat"),
    "panda": ("n02510455", "giant panda, panda, panda bear, coon bear, Ailuropoda melanoleuca"),
    "castle": ("n02980441", "castle"),
    "jeep": ("n03594945", "jeep, landrover"),
    "violin": ("n04536866", "violin, fiddle"),
    "pizza": ("n07873807", "pizza, pizza pie"),
}
# how each id was checked (recorded in the manifest)
WNID_VERIFICATION = {
    **{c: "pre-assigned as confirmed; re-checked in imagenet_r_wnids (hendrycks/imagenet-r eval.py @ 44d3a1d)"
       for c in ("goldfish", "hummingbird", "penguin", "husky")},
    **{c: "pre-assigned as 'verify'; found in imagenet_r_wnids (hendrycks/imagenet-r eval.py @ 44d3a1d) and the "
          "synset words match the ImageNet-1k list" for c in ("cat", "panda", "castle", "jeep", "violin", "pizza")},
}

PROMPT_RE = re.compile(r"^(?:a|an) (\S+) of (?:a|an) (\S+)$")


def parse_prompt(prompt: str, where: str) -> tuple[str, str]:
    """"a sketch of a penguin" → ("sketch", "penguin")."""
    match = PROMPT_RE.match(prompt.strip())
    if not match:
        raise ManifestError(f"{where}: prompt {prompt!r} is not of the form 'a|an <rendition> of a|an <class>'")
    return match.group(1), match.group(2)


def classify_edit(source: str, target: str, where: str) -> tuple[str, tuple[str, str]]:
    """(edit category, blend words) from the prompt difference."""
    src_rendition, src_class = parse_prompt(source, where)
    tgt_rendition, tgt_class = parse_prompt(target, where)
    if src_class != tgt_class:
        category = "rendition+class" if src_rendition != tgt_rendition else "class"
        return category, (src_class, tgt_class)
    if src_rendition == tgt_rendition:
        raise ManifestError(f"{where}: target {target!r} equals the source prompt {source!r}")
    return "rendition", (src_rendition, tgt_rendition)


def build_manifest(pnp_yaml: str | Path) -> dict:
    """The manifest (as plain data) from the PnP YAML with source prompts."""
    pnp_yaml = Path(pnp_yaml)
    entries = yaml.safe_load(pnp_yaml.read_text(encoding="utf-8"))
    images = []
    for index, entry in enumerate(entries):
        where = f"{pnp_yaml} entry {index}"
        init_img = PurePosixPath(str(entry["init_img"]).strip())
        cls, filename = init_img.parent.name, init_img.name
        if cls not in CLASS_WNIDS:
            raise ManifestError(f"{where}: class folder {cls!r} has no WordNet id in CLASS_WNIDS")
        wnid = CLASS_WNIDS[cls][0]
        source = str(entry["source_prompt"]).strip()
        edits = []
        for k, target in enumerate(entry["target_prompts"]):
            target = str(target).strip()
            category, blend = classify_edit(source, target, f"{where} target_prompts[{k}]")
            edits.append({"target_prompt": target, "blend_words": list(blend), "category": category})
        images.append({
            "id": f"{cls}/{PurePosixPath(filename).stem}",
            "file": f"{cls}/{filename}",
            "archive": "imagenet-r",
            "member": f"imagenet-r/{wnid}/{filename}",
            "sha256": None,
            "source_prompt": source,
            "info": {"class": cls, "wnid": wnid, "rendition": parse_prompt(source, where)[0],
                     "pnp_init_img": str(init_img)},
            "edits": edits,
        })
    return {
        "name": "imagenet_r_ti2i",
        "version": "1",
        "title": "modified ImageNet-R-TI2I (Plug-and-Play benchmark prompts on ImageNet-R renditions)",
        "licence": "prompts: research-use benchmark metadata (Tumanyan et al. 2023, no licence file); "
                   "images: ImageNet-R (Hendrycks et al. 2021), no explicit licence: never committed, fetched at run time",
        "provenance": {
            "prompts": "LexiPang/FreeControl_plus @ 9c7aa0ca01a198e7d92f5a7354b958fd8b04aece "
                       "benchmarks/ImageNetR-TI2I/imnetr-ti2i-source-prompt.yaml "
                       "(sha256 f48007feaa51ac5c8cec1312e42e9dd9e38d9878611d39ed78d5538d1be21a92), a re-host of "
                       "the PnP authors' release with a source prompt added to every entry",
            "images": "members of the ImageNet-R tarball, by PnP class folder -> WordNet id",
        },
        "classes": {cls: {"wnid": wnid, "synset": words, "verified": WNID_VERIFICATION[cls]}
                    for cls, (wnid, words) in CLASS_WNIDS.items()},
        "archives": {"imagenet-r": {"url": IMAGENET_R_URL, "sha256": None, "filename": "imagenet-r.tar"}},
        "images": images,
    }


HEADER = """\
# GENERATED by `python -m bench.data.imagenet_r <imnetr-ti2i-source-prompt.yaml> <this file>`; edit the generator.
# 30 ImageNet-R images x 5 target prompts = 150 pairs. Prompts verbatim from the PnP file (including
# "a egret", "baloon"): published numbers used them. sha256: null = unknown until the first fetch
# (trust on first use: `bench data fetch` records the hashes in <cache>/imagenet_r_ti2i/sha256.lock.json).
"""


def write_manifest(pnp_yaml: str | Path, out: str | Path) -> None:
    from bench.io import write_text

    text = yaml.safe_dump(build_manifest(pnp_yaml), sort_keys=False, width=120, allow_unicode=True)
    write_text(out, HEADER + text)


class ImageNetRTI2I(ManifestDataset):
    """Loads from the download cache (``bench data fetch imagenet_r_ti2i``) or an extracted ImageNet-R
    folder given as ``user_root``."""

    default_manifest = "imagenet_r_ti2i"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.data.imagenet_r <imnetr-ti2i-source-prompt.yaml> <manifest.yaml>")
    write_manifest(sys.argv[1], sys.argv[2])

"""docs/adding-a-method.md, run as written: its files (the fenced blocks titled with a path) go into a
temporary user config dir, and the method is listed by `bench ls methods`, composes with its toy preset,
runs through the runner, passes the method contract and edits exactly as the packaged
Negative-prompt inversion does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
from conftest import REPO_ROOT, compose_config
from method_contract import check_contract, method_spec

from bench.config import USER_CONFIG_ENV
from bench.perf.run import EQUAL_ATOL

pytestmark = pytest.mark.usefixtures("one_thread")
DOC = REPO_ROOT / "docs" / "adding-a-method.md"
FILE_BLOCK = re.compile(r"^```\w+ (\S+)\n(.*?)^```", re.M | re.S)


def doc_files() -> dict[str, str]:
    """{relative path: content} of the doc's fenced blocks whose info string names a file."""
    return {path: body for path, body in FILE_BLOCK.findall(DOC.read_text(encoding="utf-8"))}


@pytest.fixture
def user_dir(tmp_path, monkeypatch) -> Iterator[Path]:
    root = tmp_path / "my-editbench"
    for relative, body in doc_files().items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(body, encoding="utf-8")
    monkeypatch.setenv(USER_CONFIG_ENV, str(root))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the user dir joins sys.path for this test only
    yield root
    sys.modules.pop("my_methods", None)


def bench_ls_methods() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", "ls", "methods"], cwd=REPO_ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def test_the_doc_ships_a_module_a_config_and_a_toy_preset():
    assert set(doc_files()) == {"my_methods.py", "method/my_negative_prompt_p2p.yaml",
                                "method_model/my_negative_prompt_p2p_toy.yaml"}


def test_bench_ls_lists_the_user_method(user_dir):
    listed = bench_ls_methods()
    assert listed.returncode == 0, listed.stderr[-2000:]
    line = next(row for row in listed.stdout.splitlines() if row.startswith("my_negative_prompt_p2p "))
    assert "My Negative-prompt inversion + P2P" in line
    assert "negative_prompt_p2p " in listed.stdout  # the packaged methods are still there


def test_the_user_method_runs_and_keeps_the_contract(user_dir, contract_pipe, contract_item, tmp_path):
    from bench.runner import run_from_config
    from methods.negative_prompt_p2p import NegativePromptP2P

    toy = compose_config(["model=toy", "method=my_negative_prompt_p2p"], tmp_path / "toy")
    assert toy.method.num_steps == 20 and toy.method.p2p_mode == "refine"  # the toy preset on top of the YAML

    cfg = compose_config(["model=tiny_random", "method=my_negative_prompt_p2p", "method.num_steps=2",
                          "dataset=toy_shapes", "limit=1", "tables=false", f"dataset.root={tmp_path / 'toy'}"],
                         tmp_path / "results")
    assert run_from_config(cfg).ok == 1

    item, image = contract_item
    spec = method_spec("my_negative_prompt_p2p")
    assert type(spec.method).__module__ == "my_methods"
    check_contract(contract_pipe, spec, item, image, tmp_path / "contract")

    packaged = NegativePromptP2P(**{k: v for k, v in spec.method.hparams().items()})
    mine = spec.method.edit(contract_pipe, spec.method.invert(contract_pipe, image, item.source_prompt, None), item,
                            None)
    theirs = packaged.edit(contract_pipe, packaged.invert(contract_pipe, image, item.source_prompt, None), item, None)
    assert (mine - theirs).abs().max().item() <= EQUAL_ATOL * max(1.0, theirs.abs().max().item())
    assert not torch.equal(mine, image[0])


def test_a_missing_user_config_dir_is_a_clear_error(tmp_path, monkeypatch):
    from bench.config import ConfigError, group_options

    monkeypatch.setenv(USER_CONFIG_ENV, str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=f"{USER_CONFIG_ENV}=.*absent is not a directory"):
        group_options("method")
    listed = bench_ls_methods()
    assert listed.returncode == 2 and "is not a directory" in listed.stderr and "Traceback" not in listed.stderr


def test_targets_outside_the_package_and_the_user_dirs_stay_refused(user_dir):
    """The allow-list grows by the modules placed in a user config dir, nothing else: a name that resolves
    to an installed module (even if a file of that name sits in the user dir) is refused."""
    from bench.config import ConfigError, instantiate

    (user_dir / "json.py").write_text("raise RuntimeError('never imported')\n", encoding="utf-8")
    for target in ("os.system", "json.loads"):
        with pytest.raises(ConfigError, match="only objects under"):
            instantiate({"_target_": target}, what="method")
    assert instantiate({"_target_": "my_methods.MyNegativePromptP2P", "num_steps": 3}, what="method").num_steps == 3

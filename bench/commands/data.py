"""``bench data``: fetch dataset files into the download cache and show what is available.

    bench data fetch <dataset|manifest.yaml> [--cache-dir DIR] [--retries N] [--timeout S] [--no-keep-archives]
    bench data list [--cache-dir DIR] [--shared-data-dir DIR]

The cache defaults to $EDITBENCH_DATA, else $EDITBENCH_CACHE/data, else <repo>/.cache/editbench/data
(the same place as ``paths.data_dir`` in the Hydra config).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path


def default_cache_dir() -> Path:
    from bench.data.manifest import repo_root

    if os.environ.get("EDITBENCH_DATA"):
        return Path(os.environ["EDITBENCH_DATA"])
    if os.environ.get("EDITBENCH_CACHE"):
        return Path(os.environ["EDITBENCH_CACHE"]) / "data"
    return repo_root() / ".cache" / "editbench" / "data"


def default_shared_dir() -> Path:
    from bench.data.manifest import repo_root

    return Path(os.environ.get("EDITBENCH_SHARED_DATA") or repo_root().parent / "shared" / "data")


def fetch_command(args: argparse.Namespace) -> int:
    from bench.data.download import DownloadError, UnverifiedDownloadWarning, fetch, print_progress
    from bench.data.manifest import ManifestError, load_manifest, manifest_path

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    status = 0
    for name in args.datasets:
        try:
            manifest = load_manifest(manifest_path(name))
            print(f"fetching {manifest.name} v{manifest.version} into {cache / manifest.name}", file=sys.stderr)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UnverifiedDownloadWarning)
                report = fetch(manifest, cache, retries=args.retries, timeout=args.timeout,
                               keep_archives=not args.no_keep_archives,
                               progress=None if args.quiet else print_progress(),
                               log=None if args.quiet else (lambda m: print(m, file=sys.stderr)))
            for warning in caught:
                print(f"warning: {warning.message}", file=sys.stderr)
            print(report.summary())
        except (DownloadError, ManifestError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
    return status


def list_command(args: argparse.Namespace) -> int:
    from bench.data.manifest import ManifestDataset, load_manifest, repo_root

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    shared = Path(args.shared_data_dir) if args.shared_data_dir else default_shared_dir()
    for path in sorted((repo_root() / "datasets").glob("*/manifest.yaml")):
        manifest = load_manifest(path)
        dataset = ManifestDataset(str(path), data_dir=str(cache), shared_data_dir=str(shared), verify_sha256=False)
        found = sum(any(p.is_file() for p in dataset.candidates(entry)) for entry in manifest.images)
        pairs = sum(len(entry.edits) for entry in manifest.images)
        print(f"{manifest.name:<18} v{manifest.version:<3} {len(manifest.images):>4} images {pairs:>4} pairs  "
              f"{found}/{len(manifest.images)} images available")
    print("folder, pie_bench: user-supplied (see docs/datasets.md)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="fetch datasets into the download cache / list datasets",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="data_command", required=True)

    fetch_parser = sub.add_parser("fetch", help="download, verify and extract a dataset's files")
    fetch_parser.add_argument("datasets", nargs="+", help="dataset name(s) under datasets/ or manifest path(s)")
    fetch_parser.add_argument("--cache-dir", default=None,
                              help="download cache (default: $EDITBENCH_DATA or .cache/editbench/data)")
    fetch_parser.add_argument("--retries", type=int, default=3, help="extra attempts per file; each resumes")
    fetch_parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    fetch_parser.add_argument("--no-keep-archives", action="store_true",
                              help="delete downloaded tarballs once the needed members are extracted")
    fetch_parser.add_argument("--quiet", action="store_true", help="no progress output")
    fetch_parser.set_defaults(func=fetch_command)

    list_parser = sub.add_parser("list", help="list datasets and how many of their images are available")
    list_parser.add_argument("--cache-dir", default=None)
    list_parser.add_argument("--shared-data-dir", default=None)
    list_parser.set_defaults(func=list_command)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

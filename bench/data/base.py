"""The dataset contract: a dataset is a named, versioned list of ``EditItem``s.

Datasets are instantiated from ``conf/dataset/<name>.yaml`` (``_target_`` + parameters). Loading
never touches the network; files a dataset needs are fetched beforehand (``bench data fetch``).
Sharding (``dataset.shard=k dataset.num_shards=K``) is applied by the runner over image groups, so
all items of one image land in one shard and share its inversion.
"""

from __future__ import annotations

from bench.data.item import EditItem, ItemError


class Dataset:
    name: str = "dataset"
    version: str = "0"

    def items(self) -> list[EditItem]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version}


def check_unique_ids(items: list[EditItem], where: str) -> list[EditItem]:
    seen: set[str] = set()
    for item in items:
        if item.item_id in seen:
            raise ItemError(f"{where}: duplicate item id {item.item_id!r}")
        seen.add(item.item_id)
    return items

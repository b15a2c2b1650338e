"""MED-NODE (Giotis et al. 2015): 70 melanoma and 100 naevus clinical photos, as a pretraining corpus.

Accepted layout: `complete_mednode_dataset/melanoma/*.jpg` and `.../naevus/*.jpg`; --root may be the folder
holding `complete_mednode_dataset/` or that folder itself (any folder with `melanoma/` and `naevus/`). The
folder name goes to the `publisher_label` extra; `label` stays empty (corpus). No groups, no test split.
"""

from __future__ import annotations

from pathlib import Path

from dermctl.data.adapters.base import (
    Adapter,
    AdapterOptions,
    AdapterResult,
    Record,
    iter_images,
    register_adapter,
    relative_name,
    require_root,
)
from dermctl.errors import DataError, UsageError

CLASSES = ("melanoma", "naevus")


@register_adapter
class MedNode(Adapter):
    name = "mednode"
    role = "corpus"
    description = "MED-NODE clinical photos (melanoma/, naevus/); pretraining corpus"
    label_columns = ()

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        root = require_root(root)
        if options.label_column:
            raise UsageError("--label-column: mednode has no label columns (its classes are folder names)")
        base = _find_base(root)
        if base is None:
            raise DataError(
                f"--root: {root} does not look like mednode: expected complete_mednode_dataset/melanoma/*.jpg "
                "and complete_mednode_dataset/naevus/*.jpg"
            )
        records = [
            Record(path=p, extras={"publisher_label": cls})
            for cls in CLASSES
            if (base / cls).is_dir()
            for p in iter_images(base / cls)
        ]
        listed = {r.path for r in records}
        unlisted = [relative_name(p, root) for p in iter_images(base) if p not in listed]
        variant = f"MED-NODE ({relative_name(base, root) if base != root else base.name}/melanoma + naevus)"
        notes = ["corpus: the melanoma/naevus folder names are kept as publisher_label only"]
        return AdapterResult(records, variant, [], unlisted, notes)


def _find_base(root: Path) -> Path | None:
    """The folder that holds melanoma/ and naevus/: root itself or a folder up to two levels below."""
    candidates = [
        root,
        *sorted(p for p in root.glob("*") if p.is_dir()),
        *sorted(p for p in root.glob("*/*") if p.is_dir()),
    ]
    for folder in candidates:
        if "__MACOSX" in folder.parts:
            continue
        if all((folder / cls).is_dir() for cls in CLASSES):
            return folder
    return None

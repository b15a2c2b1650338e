"""`folder` adapter: a folder of images, either one sub-folder per class (a labelled task, ImageFolder
layout) or images anywhere under the root without classes (an unlabelled pretraining corpus)."""

from __future__ import annotations

from pathlib import Path

from dermctl.data.adapters.base import (
    IMAGE_SUFFIXES,
    Adapter,
    AdapterOptions,
    AdapterResult,
    Record,
    iter_images,
    register_adapter,
    require_root,
)
from dermctl.errors import DataError, UsageError

ROLES = ("task", "corpus")


@register_adapter
class FolderAdapter(Adapter):
    """`root/<class>/<image>` (labelled; class = first folder under root) or flat/unstructured images."""

    name = "folder"
    role = "task"
    description = "a folder with one sub-folder per class, or a flat folder of unlabelled images"

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        require_root(root)
        if options.role is not None and options.role not in ROLES:
            raise UsageError(f"--role: {options.role!r} is not one of {', '.join(ROLES)}")
        if options.label_column is not None:
            raise UsageError(
                f"--label-column: the folder adapter takes labels from sub-folder names, not a column "
                f"(got {options.label_column!r}); use --dataset csv for a table"
            )
        images = iter_images(root)
        if not images:
            raise DataError(
                f"--root: {root} holds no image files (expected {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        in_root = [p for p in images if p.parent == root]
        by_class = [p for p in images if p.parent != root]
        class_names = sorted({p.relative_to(root).parts[0] for p in by_class})
        notes: list[str] = []
        if options.unlabelled or not class_names:
            variant = (
                "flat folder of unlabelled images" if not class_names else "image folder read as unlabelled"
            )
            records = [Record(path=p) for p in images]
            role = options.role or "corpus"
            if role == "task":
                raise UsageError(f"--role: task needs labels but {root} is read without classes")
            return AdapterResult(records=records, variant=variant, role=role)
        # Labelled: the first folder level names the class; images loose in the root have no class.
        unlisted = [str(p) for p in in_root]
        if unlisted:
            notes.append(f"{len(unlisted)} images sit in the root outside any class folder and were ignored")
        records = [Record(path=p, label=p.relative_to(root).parts[0]) for p in by_class]
        if len(class_names) < 2:
            notes.append(f"only one class folder ({class_names[0]}) found")
        variant = f"class sub-folders ({len(class_names)} classes: {', '.join(class_names[:8])}"
        variant += ", ...)" if len(class_names) > 8 else ")"
        return AdapterResult(
            records=records,
            variant=variant,
            unlisted_images=unlisted,
            notes=notes,
            role=options.role or "task",
        )

#!/usr/bin/env bash
# Pretrain on your own folder of unlabelled skin images and measure what it buys on your labelled task.
#
#   IMAGES=~/clinic-photos LABELLED=~/clinic-labelled WORKDIR=mine bash examples/own_folder.sh
#
# IMAGES:   any tree of JPEG/PNG/BMP/WebP/TIFF files (unlabelled; duplicates and corrupt files are reported)
# LABELLED: one sub-folder per class (<class>/*.jpg), or a CSV with path,label[,group] columns (LABELLED_CSV=1)
# Optional: METHOD (default dino), DERMCTL, PRETRAIN_ARGS, EMBED_ARGS, FINETUNE_ARGS, SHOTS, REPEATS.
set -euo pipefail

IMAGES=${IMAGES:?set IMAGES to your folder of unlabelled images}
LABELLED=${LABELLED:?set LABELLED to your labelled images (class folders or a CSV)}
WORKDIR=${WORKDIR:-mine}
METHOD=${METHOD:-dino}
SHOTS=${SHOTS:-1,5,10,all}
REPEATS=${REPEATS:-10}
read -r -a DERMCTL_CMD <<< "${DERMCTL:-dermctl}"
read -r -a PRETRAIN_EXTRA <<< "${PRETRAIN_ARGS:-}"
read -r -a EMBED_EXTRA <<< "${EMBED_ARGS:-}"
read -r -a FINETUNE_EXTRA <<< "${FINETUNE_ARGS:-}"
d() { "${DERMCTL_CMD[@]}" --workdir "$WORKDIR" "$@"; }

if [ "${LABELLED_CSV:-0}" = 1 ]; then
  d ingest --dataset csv --root "$LABELLED" --name task --role task ${GROUP_COLUMN:+--group-column "$GROUP_COLUMN"}
else
  d ingest --dataset folder --root "$LABELLED" --name task --role task
fi
d ingest --dataset folder --root "$IMAGES" --name corpus --unlabelled --exclude task

d pretrain --method "$METHOD" --data "$WORKDIR/manifests/corpus.csv" --name "$METHOD" --monitor-task task "${PRETRAIN_EXTRA[@]}"
d embed --model "$METHOD" --task task "${EMBED_EXTRA[@]}"
d embed --model random --task task --backbone "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['timm_name'])" "$WORKDIR/runs/$METHOD/backbone.json")" "${EMBED_EXTRA[@]}"
d probe --task task --model stratified
d knn --task task --shots "$SHOTS" --repeats "$REPEATS"
d probe --task task
d finetune --task task --model "$METHOD" "${FINETUNE_EXTRA[@]}"
d report
echo "report: $WORKDIR/reports/report.html"

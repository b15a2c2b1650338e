#!/usr/bin/env bash
# Reproduce Gröger et al. (Table 2 and Figure 1) on the real data sets, once you have downloaded them.
#
#   DATA=~/derm-data WORKDIR=study bash examples/reproduce_study.sh
#
# DATA holds one folder per data set, as the publishers ship them (see docs/datasets.md):
#   HAM10000/  PAD-UFES-20/  fitzpatrick17k/        (labelled downstream tasks)
#   ISIC/  derm7pt/  MED-NODE/  SD-260/  PH2/        (unlabelled pretraining corpora; missing ones are skipped)
#
# Every method runs with its Table 1 settings (its defaults: `dermctl pretrain --method M --print-config`).
# Optional knobs (used by the test suite to run this script at toy size):
#   DERMCTL      the dermctl command (default: dermctl)
#   CONFIG_DIR   folder of <method>.toml files passed to `pretrain --config` (default: none, Table 1)
#   PRETRAIN_ARGS, EMBED_ARGS, FINETUNE_ARGS   extra options for those commands
#   SHOTS, REPEATS                             kNN/probe label-efficiency curve (default 1,5,10,50,100,all x 10)
#   METHODS      which methods to pretrain (default: colorme simclr byol dino ibot)
set -euo pipefail

DATA=${DATA:?set DATA to the folder holding the downloaded data sets}
WORKDIR=${WORKDIR:-study}
METHODS=${METHODS:-colorme simclr byol dino ibot}
SHOTS=${SHOTS:-1,5,10,50,100,all}
REPEATS=${REPEATS:-10}
read -r -a DERMCTL_CMD <<< "${DERMCTL:-dermctl}"
read -r -a PRETRAIN_EXTRA <<< "${PRETRAIN_ARGS:-}"
read -r -a EMBED_EXTRA <<< "${EMBED_ARGS:-}"
read -r -a FINETUNE_EXTRA <<< "${FINETUNE_ARGS:-}"
d() { "${DERMCTL_CMD[@]}" --workdir "$WORKDIR" "$@"; }

# 1. Downstream tasks in their official layouts (official test sets kept; grouped 85/15 train/val).
d ingest --dataset ham10000 --root "$DATA/HAM10000"
d ingest --dataset pad-ufes-20 --root "$DATA/PAD-UFES-20"
d ingest --dataset fitzpatrick17k --root "$DATA/fitzpatrick17k" --granularity three
TASKS=(ham10000 pad-ufes-20 fitzpatrick17k)

# 2. Pretraining corpora, without any image of a downstream task (same bytes, same id or near duplicate).
EXCLUDE=(--exclude ham10000 --exclude pad-ufes-20 --exclude fitzpatrick17k)
for pair in isic-archive:ISIC derm7pt:derm7pt mednode:MED-NODE sd260:SD-260 ph2:PH2; do
  dataset=${pair%%:*}; folder=${pair#*:}
  if [ -d "$DATA/$folder" ]; then
    d ingest --dataset "$dataset" --root "$DATA/$folder" "${EXCLUDE[@]}"
  else
    echo "skipping $dataset: no $DATA/$folder" >&2
  fi
done

# 3. Pretraining: one run per method on every corpus (task manifests in the folder are skipped).
for method in $METHODS; do
  config=()
  if [ -n "${CONFIG_DIR:-}" ] && [ -f "$CONFIG_DIR/$method.toml" ]; then config=(--config "$CONFIG_DIR/$method.toml"); fi
  if [ -f "$WORKDIR/runs/$method/run.json" ]; then resume=(--resume); else resume=(); fi
  d pretrain --method "$method" --data "$WORKDIR/manifests" --name "$method" "${config[@]}" "${resume[@]}" \
    --monitor-task fitzpatrick17k "${PRETRAIN_EXTRA[@]}" || [ $? -eq 4 ]  # a diverged run is reported, not fatal
done

# 4. Frozen features of every task: each pretrained model, ImageNet (when the weights can be had), random.
MODELS=()
for method in $METHODS; do
  if [ -f "$WORKDIR/runs/$method/backbone.json" ]; then d embed --model "$method" "${EMBED_EXTRA[@]}"; MODELS+=("$method"); fi
done
for backbone in resnet50 vit_tiny_patch16_224; do
  if d embed --model imagenet --backbone "$backbone" "${EMBED_EXTRA[@]}"; then
    MODELS+=("imagenet-$backbone")
  else
    echo "ImageNet weights for $backbone unavailable: that row stays empty" >&2
  fi
  d embed --model random --backbone "$backbone" "${EMBED_EXTRA[@]}"
done

# 5. Linear probe (Table 2, top), kNN few-shot (Figure 1), stratified baseline.
for task in "${TASKS[@]}"; do
  d probe --task "$task" --model stratified
  d probe --task "$task"
  d knn --task "$task" --shots "$SHOTS" --repeats "$REPEATS"
done

# 6. Fine-tuning (Table 2, bottom): ImageNet, ColorMe and iBOT as in the paper, plus whatever else was run.
for task in "${TASKS[@]}"; do
  for model in "${MODELS[@]}"; do
    case "$model" in imagenet-vit_tiny_patch16_224) continue ;; esac  # the paper fine-tunes ImageNet ResNet-50
    d finetune --task "$task" --model "$model" "${FINETUNE_EXTRA[@]}"
  done
done

# 7. The report: reports/table2.{md,csv,tex}, reports/figure1.{png,svg}, reports/report.html.
d report

#!/usr/bin/env bash
# The ablation Gröger et al. planned (§4): is a gain the method's or the architecture's? The same methods
# pretrained on both backbones, evaluated alike, laid out by `dermctl report` as a method x backbone grid
# (report.html, section "method x backbone").
#
#   CORPUS=study/manifests TASK=ham10000 WORKDIR=study bash examples/ablation.sh
#
# Runs every (method, backbone) pair dermctl can train: SimCLR, BYOL and DINO on both ResNet-50 and
# ViT-tiny/16; ColorMe only on ResNet-50 (its U-Net needs a CNN's feature pyramid) and iBOT only on
# ViT-tiny (masked image modelling needs patch tokens): those two pairs are skipped with a line saying why.
# Each backbone also gets its random-init and (when the weights can be had) ImageNet rows. Finished runs are
# not pretrained again, so the script can be re-run after adding a method.
# All runs start from the same INIT (default random), so that neither architecture brings ImageNet
# knowledge the other lacks; set INIT=imagenet to ask the other question.
#
# CORPUS: a pretraining manifest (or a folder of them) in WORKDIR, from `dermctl ingest`; TASK: a labelled
# task ingested in WORKDIR. Optional: METHODS (default simclr byol dino colorme ibot), BACKBONES (default
# resnet50 vit_tiny_patch16_224), CONFIG_DIR (folder of <method>.toml for `pretrain --config`), DERMCTL,
# PRETRAIN_ARGS, EMBED_ARGS, SHOTS, REPEATS.
set -euo pipefail

CORPUS=${CORPUS:?set CORPUS to the pretraining manifest or folder}
TASK=${TASK:?set TASK to a labelled task of WORKDIR}
WORKDIR=${WORKDIR:-study}
INIT=${INIT:-random}
METHODS=${METHODS:-simclr byol dino colorme ibot}
BACKBONES=${BACKBONES:-resnet50 vit_tiny_patch16_224}
SHOTS=${SHOTS:-1,5,10,all}
REPEATS=${REPEATS:-10}
read -r -a DERMCTL_CMD <<< "${DERMCTL:-dermctl}"
read -r -a PRETRAIN_EXTRA <<< "${PRETRAIN_ARGS:-}"
read -r -a EMBED_EXTRA <<< "${EMBED_ARGS:-}"
d() { "${DERMCTL_CMD[@]}" --workdir "$WORKDIR" "$@"; }

MODELS=()
for method in $METHODS; do
  for backbone in $BACKBONES; do
    case "$method:$backbone" in
      colorme:vit*) echo "skipping colorme on $backbone: its U-Net decoder needs a CNN" >&2; continue ;;
      ibot:resnet*) echo "skipping ibot on $backbone: masked image modelling needs a ViT's patch tokens" >&2; continue ;;
    esac
    name="$method-$backbone"
    config=()
    if [ -n "${CONFIG_DIR:-}" ] && [ -f "$CONFIG_DIR/$method.toml" ]; then config=(--config "$CONFIG_DIR/$method.toml"); fi
    if [ -f "$WORKDIR/runs/$name/backbone.json" ]; then
      echo "$name: pretrained already" >&2
    else
      # an interrupted run continues where it stopped
      if [ -f "$WORKDIR/runs/$name/run.json" ]; then resume=(--resume); else resume=(); fi
      d pretrain --method "$method" --data "$CORPUS" --name "$name" --init "$INIT" "${config[@]}" \
        --set "backbone=$backbone" "${resume[@]}" "${PRETRAIN_EXTRA[@]}" || [ $? -eq 4 ]  # diverged: reported
    fi
    if [ -f "$WORKDIR/runs/$name/backbone.json" ]; then
      d embed --model "$name" --task "$TASK" "${EMBED_EXTRA[@]}"
      MODELS+=(--model "$name")
    fi
  done
done

# Each architecture's own baselines: random init, and ImageNet weights when they can be had here.
for backbone in $BACKBONES; do
  d embed --model random --backbone "$backbone" --task "$TASK" "${EMBED_EXTRA[@]}"
  MODELS+=(--model "random-$backbone")
  if d embed --model imagenet --backbone "$backbone" --task "$TASK" "${EMBED_EXTRA[@]}"; then
    MODELS+=(--model "imagenet-$backbone")
  else
    echo "ImageNet weights for $backbone unavailable: the report says so" >&2
  fi
done

d knn --task "$TASK" "${MODELS[@]}" --shots "$SHOTS" --repeats "$REPEATS"
d probe --task "$TASK" "${MODELS[@]}"
d report --tasks "$TASK"

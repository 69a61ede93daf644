#!/usr/bin/env bash
# Trains the embedded default model (configs/default_model.yaml -> configs/default_model.npz) the
# way it was trained: generated scenes from fixed seeds, then seven stages, each started from the
# last one's weights. About seven hours of training on a 2-core CPU; a GPU is much faster.
#
#   scripts/train_default_model.sh [DATA_DIR] [RUNS_DIR]     (defaults: data runs)
#
# Re-running it skips the data sets and stages already done; an interrupted stage resumes from its
# last checkpoint. The result is RUNS_DIR/stage7/model.npz, evaluated on 100 scenes it never saw.
# (Stages 1-3 ran at short side 320 and stages 1-4 with 28x28 masks: the --set lines below.)
set -euo pipefail
DATA=${1:-data}
RUNS=${2:-runs}
CONFIG=configs/default_model.yaml

scenes() {  # scenes DIR IMAGES SEED
    [ -f "$1/annotations.json" ] || python -m models.scenes write "$1" --images "$2" --seed "$3"
}

stage() {  # stage NAME OUT ARGS...: one training run into OUT, skipped once done
    local name=$1 out=$2; shift 2
    [ -f "$RUNS/$name.done" ] && return
    echo "== $name"
    local resume=()
    [ -f "$out/checkpoint.npz" ] && resume=(--resume)
    python -m models.train --config "$CONFIG" --out "$out" "${resume[@]}" "$@"
    touch "$RUNS/$name.done"
}

mkdir -p "$RUNS"
scenes "$DATA/street_train" 1600 1000
scenes "$DATA/street_train6k" 6000 1000
scenes "$DATA/street_train_b" 6000 2000
scenes "$DATA/street_train_c" 6000 3000
scenes "$DATA/street_val" 100 777777

SMALL=(--set input.min_size=320 --set input.max_size=576 --set mask_head.deconvs=1)
stage stage1 "$RUNS/default" --data "$DATA/street_train" "${SMALL[@]}" --steps 1100
stage stage2 "$RUNS/default" --data "$DATA/street_train" "${SMALL[@]}" --steps 2200
stage stage3 "$RUNS/default" --data "$DATA/street_train" "${SMALL[@]}" --steps 3300
stage stage4 "$RUNS/stage4" --data "$DATA/street_train6k" --set mask_head.deconvs=1 \
    --init "$RUNS/default/model.npz" --steps 3000
stage stage5 "$RUNS/stage5" --data "$DATA/street_train_b" --init "$RUNS/stage4/model.npz" --steps 3000
stage stage6 "$RUNS/stage6" --data "$DATA/street_train_c" --init "$RUNS/stage5/model.npz" --steps 3000 \
    --learning-rate 5e-4
stage stage7 "$RUNS/stage7" --data "$DATA/street_train_b" --init "$RUNS/stage6/model.npz" --steps 2000 \
    --learning-rate 2.5e-4

python -m models.evaluate --config "$CONFIG" --weights "$RUNS/stage7/model.npz" --data "$DATA/street_val" \
    --out "$RUNS/stage7/eval.json"
echo "cp $RUNS/stage7/model.npz configs/default_model.npz   # to make it the default"

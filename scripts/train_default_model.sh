#!/usr/bin/env bash
# Trains the embedded default model (configs/default_model.yaml -> configs/default_model.npz) the
# way it was trained: generated scenes from fixed seeds, then eight stages, each started from the
# last one's weights. About eight hours on a 2-core CPU (7.3 h of it training).
#
#   scripts/train_default_model.sh [DATA_DIR] [RUNS_DIR]     (defaults: data runs)
#
# Re-running it skips the stages already done (RUNS_DIR/NAME.done); an interrupted stage resumes
# from its last checkpoint. A stage writes the data set it trains on first, if it is not there
# yet. The result is RUNS_DIR/stage8/model.npz, evaluated on 100 scenes it never saw.
# (Stages 1-3 ran at short side 320 and stages 1-4 with 28x28 masks: the --set lines below.)
set -euo pipefail
DATA=${1:-data}
RUNS=${2:-runs}
CONFIG=configs/default_model.yaml

scenes() {  # scenes NAME IMAGES SEED: a generated data set DATA/NAME, written once
    [ -f "$DATA/$1/annotations.json" ] || python -m models.data.scenes write "$DATA/$1" --images "$2" --seed "$3"
}

stage() {  # stage NAME OUT DATASET ARGS...: one training run into OUT on DATA/DATASET, skipped once done
    local name=$1 out=$2 data=$3; shift 3
    [ -f "$RUNS/$name.done" ] && return
    echo "== $name"
    case $data in
        street_train) scenes "$data" 1600 1000 ;;
        street_train6k) scenes "$data" 6000 1000 ;;
        street_train_b) scenes "$data" 6000 2000 ;;
        street_train_c) scenes "$data" 6000 3000 ;;
        street_train_d) scenes "$data" 4000 4000 ;;
    esac
    local resume=()
    [ -f "$out/checkpoint.npz" ] && resume=(--resume)
    python -m models.training.train --config "$CONFIG" --data "$DATA/$data" --out "$out" "${resume[@]}" "$@"
    touch "$RUNS/$name.done"
}

mkdir -p "$RUNS"
SMALL=(--set input.min_size=320 --set input.max_size=576 --set mask_head.deconvs=1)
stage stage1 "$RUNS/default" street_train "${SMALL[@]}" --steps 1100
stage stage2 "$RUNS/default" street_train "${SMALL[@]}" --steps 2200
stage stage3 "$RUNS/default" street_train "${SMALL[@]}" --steps 3300
stage stage4 "$RUNS/stage4" street_train6k --set mask_head.deconvs=1 --init "$RUNS/default/model.npz" --steps 3000
stage stage5 "$RUNS/stage5" street_train_b --init "$RUNS/stage4/model.npz" --steps 3000
stage stage6 "$RUNS/stage6" street_train_c --init "$RUNS/stage5/model.npz" --steps 3000 --learning-rate 5e-4
stage stage7 "$RUNS/stage7" street_train_b --init "$RUNS/stage6/model.npz" --steps 2000 --learning-rate 2.5e-4
stage stage8 "$RUNS/stage8" street_train_d --init "$RUNS/stage7/model.npz" --steps 2000 --learning-rate 1.25e-4

scenes street_val 100 777777
python -m models.tools.evaluate --config "$CONFIG" --weights "$RUNS/stage8/model.npz" --data "$DATA/street_val" \
    --out "$RUNS/stage8/eval.json"
echo "cp $RUNS/stage8/model.npz configs/default_model.npz   # to make it the default"

#!/usr/bin/env bash
# One GPU session of at most ~9 minutes, run from the repository root (what produced gpu_session.md):
#   1. pipelines/bench_gpu.py at full size in fp16, alone on the GPU (issue 20's table);
#      meanwhile, on the CPU, three run folders seeded from the shipped shapes-tiny and the dataset cache;
#   2. three position-training runs side by side on the GPU until the time is up (issue 21), batches built in
#      DataLoader worker processes, each run's final EMA weights exported;
#   3. pipelines/evaluate_model.py on each export (float32).
# Results go to $OUT (at most 8 files): bench_gpu.md / bench_gpu.json, session.log, runs.txt (each run's settings,
# training log and evaluation), and each run's EMA weights <run>_ema.safetensors.
# Try it on a CPU at toy size: OUT=/tmp/out BUDGET=150 DEVICE=cpu BENCH_ARGS="--tiny --steps 2 --inner-steps 1" \
#   TRAIN_ARGS="--num-scenes 64 --batch-size 8" EVAL_ARGS="--one-object 2 --two-object 2 --positions 2 --steps 3" bash <this>
set -u
OUT=${OUT:?set OUT}
BUDGET=${BUDGET:-560}            # seconds for the whole script
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:---one-object 100 --two-object 200 --positions 100}
BENCH_SECONDS=${BENCH_SECONDS:-280}  # 0: no benchmark (e.g. BENCH_ARGS="--models sdxl" needs more than 280 s)
START=$(date +%s)
mkdir -p "$OUT"
LOG=$OUT/session.log
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 DIFFUSION_LAB_NO_PROGRESS=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PY=${PY:-python3}
elapsed() { echo $(( $(date +%s) - START )); }
echo "start: $(date -u) device=$DEVICE budget=${BUDGET}s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
$PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"

# name  lr  grounding weight  [position grounding weight: < 0 or absent = position words grounded with the others]
#   [position caption rate: absent = 0.5; give the position grounding weight (-1 = none of its own) to set it]
RUNS=${RUNS:-"A 2e-4 0.01
B 2e-4 0.1
C 4e-4 0.3"}
R=/tmp/position_runs
rm -rf $R && mkdir -p $R

# 1. data on the CPU (seed three runs, render + encode once) while the benchmark has the GPU
(
  for name in $(cut -d' ' -f1 <<< "$RUNS"); do
    $PY pipelines/train_shapes_tiny.py --stage seed --run-dir $R/$name --seed-from shapes-tiny --device cpu || exit 1
  done
  $PY pipelines/train_shapes_tiny.py --stage data --run-dir $R/$(head -1 <<< "$RUNS" | cut -d' ' -f1) --device cpu --threads 8 --grounding-weight 0.01 \
      --progress false $TRAIN_ARGS || exit 1
  FIRST=$(head -1 <<< "$RUNS" | cut -d' ' -f1)
  for name in $(cut -d' ' -f1 <<< "$RUNS"); do [ $name = $FIRST ] || cp $R/$FIRST/latents_* $R/$FIRST/coverage_* $R/$name/; done
  echo "data ready at $(elapsed) s"
) > $R/data.log 2>&1 &
DATA=$!
if [ "$BENCH_SECONDS" -gt 0 ]; then
  echo "== bench_gpu at $(elapsed) s"
  timeout $BENCH_SECONDS $PY pipelines/bench_gpu.py --out $R/bench $BENCH_ARGS
  echo "bench_gpu rc=$? at $(elapsed) s"
fi
cp $R/bench/results.md $OUT/bench_gpu.md 2>/dev/null; cp $R/bench/results.json $OUT/bench_gpu.json 2>/dev/null
wait $DATA; echo "data rc=$?"; cat $R/data.log | tail -5

# 2. three training runs side by side until BUDGET - 110 s
MINUTES=$($PY -c "print(max(0.5, ($BUDGET - 110 - $(elapsed) - 25) / 60))")
echo "== training for $MINUTES minutes each, from $(elapsed) s"
PIDS=""  # a plain `wait` would also wait for the tee of the log (a process substitution): wait for these alone
while read name lr grounding position_grounding caption_rate; do
  $PY pipelines/train_shapes_tiny.py --stage unet --run-dir $R/$name --device $DEVICE --unet-steps 200000 \
      --lr $lr --min-lr $lr --batch-size 256 --ema-decay 0.998 --grounding-weight $grounding --text-layer-lr-scale 3 \
      --position-grounding-weight ${position_grounding:--1} \
      --position-caption-rate ${caption_rate:-0.5} --data-workers 4 --max-minutes $MINUTES --checkpoint-every 2000 \
      --export-every 1000000 --export-dir $R/$name/export --eval-every 0 --log-every 200 --progress false \
      --threads 2 $TRAIN_ARGS > $R/$name/train.out 2>&1 &
  PIDS="$PIDS $!"
done <<< "$RUNS"
wait $PIDS
echo "training done at $(elapsed) s"

# 3. evaluate each export (float32), side by side
PIDS=""
for name in $(cut -d' ' -f1 <<< "$RUNS"); do
  timeout 100 $PY pipelines/evaluate_model.py --model $R/$name/export --device $DEVICE --dtype float32 \
      --vae-images 0 --speed-runs 0 --out $R/$name/eval $EVAL_ARGS > $R/$name/eval.txt 2>&1 &
  PIDS="$PIDS $!"
done
wait $PIDS
echo "evaluation done at $(elapsed) s"

for name in $(cut -d' ' -f1 <<< "$RUNS"); do
  {
    echo "===== run $name"; echo "$RUNS" | grep "^$name "
    echo "--- unet_state.json"; cat $R/$name/unet_state.json; echo
    echo "--- log.jsonl"; cat $R/$name/log.jsonl
    echo "--- train.out (tail)"; tail -20 $R/$name/train.out
    echo "--- evaluation"; cat $R/$name/eval.txt
  } >> $OUT/runs.txt
  cp $R/$name/unet_text_ema.safetensors $OUT/${name}_ema.safetensors 2>/dev/null
done
echo "end at $(elapsed) s"

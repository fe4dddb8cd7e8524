#!/usr/bin/env bash
# Regenerates results/nmt-quality.json (Table 4 and decoding speed) from the trained seq2seq checkpoints
# (scripts/train_nmt.py; see results/baselines.json for their commands).  The speed rows time engines side by
# side: run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-256.best.pt --model-name multi30k-gnmt-256 --parts quality --little-bits 4
# INT8 (the paper's), each ratio with and without the dual-module output projection (engines dual, dual+out)
python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-256.best.pt --model-name multi30k-gnmt-256 --parts quality --little-bits 8 --ratios 0,0.1,0.3,0.5,0.7,0.9 --output-ratio 0.99 --allocation loss --threads 1
# beyond eq. 5: the contribution-score masks (dualtvm/contribution.py), one ratio and loss-aware per layer and gate
python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-256.best.pt --model-name multi30k-gnmt-256 --parts quality --little-bits 8 --ratios 0,0.1,0.3,0.5,0.7,0.9 --mask-rule contribution --allocation loss --threads 1
python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-256.best.pt --model-name multi30k-gnmt-256 --parts speed --speed-sentences 200 --little-bits 8,4 --threads 2 --output-ratio 0.99
# the paper's decoder size (cache/multi30k-gnmt-1024.best.pt: whatever epoch its training has reached)
python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-1024.best.pt --model-name multi30k-gnmt-1024 --parts quality --little-bits 8 --ratios 0,0.1,0.3,0.5,0.7,0.9 --output-ratio 0.99 --allocation loss
python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-1024.best.pt --model-name multi30k-gnmt-1024 --parts quality --little-bits 4 --ratios 0.5
python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-1024.best.pt --model-name multi30k-gnmt-1024 --parts speed --speed-sentences 200 --little-bits 8,4 --threads 2 --output-ratio 0.99
# a second training of the 1024-unit recipe (train_nmt.py --hidden 1024 --epochs 2 --dropout 0.3 --out
# cache/multi30k-gnmt-1024-r2.pt): eq. 5 and the contribution rule on one checkpoint, each with loss-aware allocation
C="--checkpoint cache/multi30k-gnmt-1024-r2.best.pt --model-name multi30k-gnmt-1024-r2 --parts quality --threads 1"
python scripts/eval_nmt.py $C --little-bits 8 --ratios 0,0.5,0.7,0.9 --allocation loss
python scripts/eval_nmt.py $C --little-bits 8 --ratios 0,0.5,0.7,0.9 --mask-rule contribution --allocation loss
# session 24: the rest of its rows (10/30 %, the dual output projection, INT4) and its decoding speed
python scripts/eval_nmt.py $C --little-bits 8 --ratios 0,0.1,0.3,0.5,0.7,0.9 --output-ratio 0.99 --allocation loss
python scripts/eval_nmt.py $C --little-bits 8 --ratios 0,0.1,0.3 --mask-rule contribution --allocation loss
python scripts/eval_nmt.py $C --little-bits 4 --ratios 0.5
S="--checkpoint cache/multi30k-gnmt-1024-r2.best.pt --model-name multi30k-gnmt-1024-r2 --parts speed --speed-sentences 200"
python scripts/eval_nmt.py $S --little-bits 8,4 --threads 2 --output-ratio 0.99
python scripts/eval_nmt.py $S --little-bits 8,4 --threads 2 --output-ratio 0.99 --fused-step
# the same with each compiled engine's whole decode step as one build (dualtvm/gnmt_step.py)
python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-256.best.pt --model-name multi30k-gnmt-256 --parts speed --speed-sentences 200 --little-bits 8,4 --threads 2 --output-ratio 0.99 --fused-step
python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-1024.best.pt --model-name multi30k-gnmt-1024 --parts speed --speed-sentences 200 --little-bits 8,4 --threads 2 --output-ratio 0.99 --fused-step
# session 29 on the AMD machine: the retrained GNMT-1024's fused step again, built with the in-step verdicts of session 26
python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-1024-r2.best.pt --model-name multi30k-gnmt-1024-r2 --parts speed --speed-sentences 200 --little-bits 8,4 --threads 2 --output-ratio 0.99 --fused-step
# session 31 (Intel): a second 256-unit training (train_nmt.py --hidden 256 --epochs 5 --threads 1 --out
# cache/multi30k-gnmt-256-r2.pt); eq. 2's little modules at eq. 3's k (332) and at k = 64, the learned projection at
# k = 64, and the output projection's little module at k = 32 (eq. 2's and learned) beside its default k = 128
C="--checkpoint cache/multi30k-gnmt-256-r2.best.pt --model-name multi30k-gnmt-256-r2 --parts quality --threads 1"
python scripts/eval_nmt.py $C --ratios 0,0.5,0.7,0.9 --output-ratio 0.99
python scripts/eval_nmt.py $C --ratios 0.5,0.7,0.9 --projection learned --k 64 --output-ratio 0.99 --output-k 32 --output-projection learned
python scripts/eval_nmt.py $C --ratios 0.5,0.7,0.9 --k 64 --output-ratio 0.99 --output-k 32

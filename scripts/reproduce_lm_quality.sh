#!/usr/bin/env bash
# Regenerates results/lm-quality-ptb.json (Tables 1, 2/3, 5, 6, 7 quality columns) from the trained checkpoints
# (scripts/train_lm.py; see results/baselines.json for their commands).  Hours on a 2-core CPU: run it with nohup.
set -euo pipefail
cd "$(dirname "$0")/.."
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-750.best.pt --model-name ptb-lstm-750 --parts ratios,allocation,search
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-750.best.pt --model-name ptb-lstm-750 --parts resilience,precision,eps
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750.best.pt --model-name ptb-gru-750 --parts ratios,allocation,search,eps
# the paper's main model (cache/ptb-lstm-1500.best.pt: whatever epoch its training has reached; rows say big_epochs)
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500.best.pt --model-name ptb-lstm-1500 --parts ratios,allocation,search
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500.best.pt --model-name ptb-lstm-1500 --parts resilience,precision,eps
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500.best.pt --model-name ptb-lstm-1500 --parts ratios --little-bits 4
# GRU-1500 (Table 3's left half; cache/ptb-gru-1500.best.pt at whatever epoch its training has reached)
python scripts/eval_lm.py --checkpoint cache/ptb-gru-1500.best.pt --model-name ptb-gru-1500 --parts ratios,allocation,search
# the per-gate allocation study (results/lm-allocation-ptb.json): the three allocation costs beside one ratio for all gates
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500.best.pt --model-name ptb-lstm-1500 --parts ratios,allocation,search \
  --ratios 0.5,0.6,0.7 --allocation-costs loss,activation,measured --results results/lm-allocation-ptb.json
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750.best.pt --model-name ptb-gru-750 --parts ratios,allocation,search \
  --ratios 0.5,0.6,0.7 --allocation-costs loss,activation,measured --results results/lm-allocation-ptb.json
# beyond eq. 5: both saturated tails of the sigmoid gates insensitive, one ratio for all gates, beside eq. 5's rule
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750.best.pt --model-name ptb-gru-750 --parts ratios --ratios 0.5,0.6,0.7 \
  --sigmoid-tails both --results results/lm-allocation-ptb.json
for t in low both; do
  python scripts/eval_lm.py --checkpoint cache/ptb-lstm-750.best.pt --model-name ptb-lstm-750 --parts ratios \
    --ratios 0.5,0.6,0.7 --sigmoid-tails $t --results results/lm-allocation-ptb.json
done
# beyond eq. 5: the contribution score (dualtvm/contribution.py) as the mask's test, one ratio and per gate
for m in gru lstm; do
  python scripts/eval_lm.py --checkpoint cache/ptb-$m-750.best.pt --model-name ptb-$m-750 --parts ratios,allocation,search \
    --ratios 0.5,0.6,0.7 --allocation-costs activation,measured --mask-rule contribution --results results/lm-allocation-ptb.json
done
# the loss-aware (diagonal-Fisher) allocation under the same rule
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750.best.pt --model-name ptb-gru-750 --parts allocation \
  --ratios 0.5,0.6,0.7 --allocation-costs loss --mask-rule contribution --results results/lm-allocation-ptb.json
# ... and on an LSTM (the gradient probe records its cell state), with its comparators, on a second training of
# LSTM-750's recipe (train_lm.py --rnn LSTM --hidden 750 --dropout 0.4 --epochs 3 --out cache/ptb-lstm-750-r2.pt)
# (and the same on a second training of GRU-750's, train_lm.py --rnn GRU … --out cache/ptb-gru-750-r2.pt)
for m in lstm gru; do
  python scripts/eval_lm.py --checkpoint cache/ptb-$m-750-r2.best.pt --model-name ptb-$m-750-r2 --parts ratios,allocation \
    --ratios 0.5,0.6,0.7 --allocation-costs activation,loss,measured --mask-rule contribution --results results/lm-allocation-ptb.json
done
# GRU-750 trained on to 6 epochs (train_lm.py --rnn GRU --hidden 750 --dropout 0.4 --epochs 6 --out
# cache/ptb-gru-750-r3.pt, resumed from the r2 run's epoch 3): does a better-trained GRU lose less?
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750-r3.best.pt --model-name ptb-gru-750-r3 --parts ratios,allocation \
  --ratios 0.5,0.6,0.7 --allocation-costs activation,loss,measured --mask-rule contribution --results results/lm-allocation-ptb.json
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750-r3.best.pt --model-name ptb-gru-750-r3 --parts ratios,allocation,search
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750-r3.best.pt --model-name ptb-gru-750-r3 --parts eps
# the INT4 little module (the compiled tvm-dual-int4 engine) at every ratio
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-750.best.pt --model-name ptb-lstm-750 --parts ratios --little-bits 4
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750.best.pt --model-name ptb-gru-750 --parts ratios --little-bits 4
# session 25: the paper's main model retrained with the lost checkpoint's command (train_lm.py --rnn LSTM --hidden 1500
# --dropout 0.65 --epochs 6 --out cache/ptb-lstm-1500-r2.pt): Tables 2, 1, 5, 6, INT4 and the per-gate allocation on it
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500-r2.best.pt --model-name ptb-lstm-1500-r2 --parts ratios
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500-r2.best.pt --model-name ptb-lstm-1500-r2 --parts resilience,precision,eps
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500-r2.best.pt --model-name ptb-lstm-1500-r2 --parts ratios --little-bits 4
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500-r2.best.pt --model-name ptb-lstm-1500-r2 --parts allocation,search
# Table 7 (reduced to PTB LSTM-750): AGP pruning to 80 / 90 % and the same fine-tuning without pruning (0 %)
for s in 80 90 0; do
  ck=cache/ptb-lstm-750-sparse$s.best.pt
  [ -f "$ck" ] || python scripts/prune_lm.py --checkpoint cache/ptb-lstm-750.best.pt --sparsity "0.$s"
  python scripts/eval_lm.py --checkpoint "$ck" --model-name "ptb-lstm-750-sparse$s" --parts ratios --ratios 0.5
done
# Table 7 on the paper's corpus (results/lm-quality-wikitext-2.json): an LSTM-750 LM on WikiText-2 (the paper's is
# LSTM-1500), its dual-module PPL at 50 %, then the same AGP pruning / fine-tuning and dual-module PPL as above
[ -f cache/wikitext-2-lstm-750.best.pt ] || python scripts/train_lm.py --corpus wikitext-2 --rnn LSTM --hidden 750 \
  --dropout 0.4 --epochs 1 --threads 2
wt2=(--corpus wikitext-2 --parts ratios --ratios 0.5 --results results/lm-quality-wikitext-2.json)
python scripts/eval_lm.py --checkpoint cache/wikitext-2-lstm-750.best.pt --model-name wikitext-2-lstm-750 "${wt2[@]}"
for s in 80 90 0; do
  ck=cache/wikitext-2-lstm-750-sparse$s.best.pt
  [ -f "$ck" ] || python scripts/prune_lm.py --checkpoint cache/wikitext-2-lstm-750.best.pt --corpus wikitext-2 --sparsity "0.$s"
  python scripts/eval_lm.py --checkpoint "$ck" --model-name "wikitext-2-lstm-750-sparse$s" "${wt2[@]}"
done
# session 29: ptb-lstm-1500-r2's largest ratio within +1 % under contribution masks, with INT4 W_LL (the compiled engine's fastest little module)
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500-r2.best.pt --model-name ptb-lstm-1500-r2 --mask-rule contribution --little-bits 4 --parts search --allocation-costs loss --results results/lm-allocation-ptb.json
# session 29: the same model under eq. 5's masks, per-gate ratios by activation error (and one ratio for all gates)
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500-r2.best.pt --model-name ptb-lstm-1500-r2 --parts search --allocation-costs activation --results results/lm-allocation-ptb.json
# session 30: the learned projection (--projection learned, beyond eq. 2) on the retrained GRU-750 and LSTM-1500, with
# contribution masks (and LSTM-1500 under eq. 5's too), at ε = 0.5 and the smaller k of larger ε
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750-r2.best.pt --model-name ptb-gru-750-r2 --parts ratios,allocation,search --ratios 0.5,0.6,0.7 --allocation-costs activation,measured --mask-rule contribution --projection learned --results results/lm-allocation-ptb.json
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500-r2.best.pt --model-name ptb-lstm-1500-r2 --parts ratios,eps --ratios 0.5 --eps-values 0.9 --mask-rule contribution --projection learned --results results/lm-allocation-ptb.json
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-1500-r2.best.pt --model-name ptb-lstm-1500-r2 --parts ratios,eps --ratios 0.5 --eps-values 0.9 --projection learned --results results/lm-allocation-ptb.json
# session 31 (Intel): ptb-gru-750 (train_lm.py --rnn GRU --hidden 750 --dropout 0.4 --epochs 3 --threads 1 reproduced it
# on this machine to the last digit of its valid and test PPL) with the learned projection and contribution masks —
# its eq. 2 rows of session 27 beside them — and k set directly (part k: 64, 128, 256 beside eq. 3's 370)
C=(--checkpoint cache/ptb-gru-750.best.pt --model-name ptb-gru-750 --ratios 0.5,0.6,0.7 --allocation-costs measured --mask-rule contribution --k-values 64,128,256 --results results/lm-allocation-ptb.json)
python scripts/eval_lm.py "${C[@]}" --parts ratios,allocation,search,k --projection learned
python scripts/eval_lm.py "${C[@]}" --parts ratios,k
# session 32 (Intel): the same part k under eq. 5's masks (the compiled tvm-dual engine's), learned and eq. 2
C=(--checkpoint cache/ptb-gru-750.best.pt --model-name ptb-gru-750 --parts k --ratios 0.5 --k-values 64,128,256 --results results/lm-allocation-ptb.json)
python scripts/eval_lm.py "${C[@]}" --projection learned
python scripts/eval_lm.py "${C[@]}"
# session 32 (Intel): ptb-lstm-750 retrained (train_lm.py --rnn LSTM --hidden 750 --dropout 0.4 --epochs 3 --threads 1:
# valid 112.30 / test 110.19, as in results/baselines.json), its part k under eq. 5's masks, learned and eq. 2
C=(--checkpoint cache/ptb-lstm-750.best.pt --model-name ptb-lstm-750 --parts k --ratios 0.5 --k-values 64,128,256 --results results/lm-allocation-ptb.json)
python scripts/eval_lm.py "${C[@]}" --projection learned
python scripts/eval_lm.py "${C[@]}"
# session 34 (Intel): ptb-lstm-1500-r3 (session 33: train_lm.py --rnn LSTM --hidden 1500 --dropout 0.65 --epochs 6
# --threads 2 --out cache/ptb-lstm-1500-r3.pt, r2's command on this machine) with
# the little module its latency rows time — k = 128 (--k, new), learned projection: INT8, contribution masks with the
# largest ratio within +1 %, INT4 — then the paper's module (Tables 2/3) and part k under eq. 5's masks
C=(--checkpoint cache/ptb-lstm-1500-r3.best.pt --model-name ptb-lstm-1500-r3)
L=(--k 128 --projection learned --results results/lm-allocation-ptb.json)
python scripts/eval_lm.py "${C[@]}" "${L[@]}" --parts ratios
python scripts/eval_lm.py "${C[@]}" "${L[@]}" --parts ratios,search --mask-rule contribution --allocation-costs loss
python scripts/eval_lm.py "${C[@]}" "${L[@]}" --parts ratios --little-bits 4
python scripts/eval_lm.py "${C[@]}" --parts ratios
python scripts/eval_lm.py "${C[@]}" --parts k --ratios 0.5 --k-values 64,128,256 --projection learned --results results/lm-allocation-ptb.json
# session 35 (Intel): INT4 W_LL with its columns equalised onto the projection's row scales (quantize.equalising_scale):
# session 34's --little-bits 4 command above, rerun, replaced its rows; and under contribution masks
python scripts/eval_lm.py "${C[@]}" "${L[@]}" --parts ratios --little-bits 4 --mask-rule contribution
# then Table 6 on the same model (the paper's module; INT4..INT1 equalised) and the GRU-750 of the k = 128 latency rows
python scripts/eval_lm.py "${C[@]}" --parts precision
G=(--checkpoint cache/ptb-gru-750.best.pt --model-name ptb-gru-750 --k 128 --projection learned --results results/lm-allocation-ptb.json --parts ratios --mask-rule contribution)
python scripts/eval_lm.py "${G[@]}"
python scripts/eval_lm.py "${G[@]}" --little-bits 4
# session 36 (Intel): Tables 1 and 5 on the same model (the paper's module)
python scripts/eval_lm.py "${C[@]}" --parts resilience,eps
# session 41 (Zen 3): the GRU-750 retrained here (train_lm.py --rnn GRU --hidden 750 --dropout 0.4 --epochs 3 --threads 1
# --out cache/ptb-gru-750-r4.pt) with the k = 128 learned little module under contribution masks, as G above
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750-r4.best.pt --model-name ptb-gru-750-r4 --k 128 --projection learned --results results/lm-allocation-ptb.json --parts ratios --mask-rule contribution
# session 42 (Zen 3): the LSTM-750 retrained there in session 41 (train_lm.py --rnn LSTM --hidden 750 --dropout 0.4
# --epochs 3 --threads 1 --out cache/ptb-lstm-750-r4.pt), same little module, and its largest ratio within +1 %
python scripts/eval_lm.py --checkpoint cache/ptb-lstm-750-r4.best.pt --model-name ptb-lstm-750-r4 --k 128 --projection learned --results results/lm-allocation-ptb.json --parts ratios,search --mask-rule contribution --allocation-costs loss
# then both r4 models' same little modules under eq. 5's masks (the tvm-dual engine's, which their latency rows time)
for m in lstm gru; do python scripts/eval_lm.py --checkpoint cache/ptb-$m-750-r4.best.pt --model-name ptb-$m-750-r4 --k 128 --projection learned --results results/lm-allocation-ptb.json --parts ratios; done
# session 43: both r4 trainings with the paper's own little module (Tables 2/3), then the learned projection at eq. 3's k
# under contribution masks, and the GRU's per-gate allocation (measured cost) and largest ratio within +1 %
for m in gru lstm; do python scripts/eval_lm.py --checkpoint cache/ptb-$m-750-r4.best.pt --model-name ptb-$m-750-r4 --parts ratios; done
for m in gru lstm; do python scripts/eval_lm.py --checkpoint cache/ptb-$m-750-r4.best.pt --model-name ptb-$m-750-r4 --projection learned --results results/lm-allocation-ptb.json --parts ratios --mask-rule contribution; done
python scripts/eval_lm.py --checkpoint cache/ptb-gru-750-r4.best.pt --model-name ptb-gru-750-r4 --parts allocation,search --ratios 0.5 --allocation-costs measured --mask-rule contribution --projection learned --results results/lm-allocation-ptb.json
# and Table 6 with per-row and per-tensor W_LL scales on both (the precision part writes both since session 43)
for m in lstm gru; do python scripts/eval_lm.py --checkpoint cache/ptb-$m-750-r4.best.pt --model-name ptb-$m-750-r4 --parts precision; done

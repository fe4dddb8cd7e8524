#!/usr/bin/env bash
# Regenerates results/latency.json: the paper's target class (Broadwell: AVX2, no VNNI) for every shape (LSTM-1500 and
# the 750-unit ones from the trained checkpoints of results/baselines.json), then the
# host's own ISA for the default model.  Every run times the INT8 (paper default, "tvm-dual") and the INT4
# ("tvm-dual-int4") little module side by side, and the INT8 one on floats ("tvm-dual-int8float": the path before the
# INT8 little GEMV ran on integer codes on AVX2 targets).  Needs the machine to itself (~50 min on 2 cores: each cold step waits for a sweep of twice the LLC).
set -euo pipefail
cd "$(dirname "$0")/.."
python scripts/bench.py --models gnmt-1024-1024 --threads 2 --rounds 8 --little-bits 8,4 --int8-float
# a decoder layer of the trained 1024-unit GNMT (scripts/train_nmt.py --hidden 1024), fed its Multi30k decoding inputs
python scripts/bench.py --models gnmt-1024-2048 --checkpoint cache/multi30k-gnmt-1024.best.pt --decoder-layer 0 --threads 2 --rounds 8 --little-bits 8,4 --int8-float
# the same layer for this CPU's own -mcpu (rows say which: sapphirerapids on the Intel machine; VNNI little GEMVs)
python scripts/bench.py --models gnmt-1024-2048 --checkpoint cache/multi30k-gnmt-1024.best.pt --decoder-layer 0 --target host --threads 2 --rounds 8 --little-bits 8,4
# the paper's main model, trained on PTB (cache/ptb-lstm-1500.best.pt): little module fitted on PTB text, real masks;
# 16 rounds: its 8-round IQRs reached 30 % of the medians on this shared machine
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500.best.pt --threads 2 --rounds 16 --little-bits 8,4 --int8-float
# the trained PTB models: little module fitted on PTB text, real masks from decoding PTB valid text
python scripts/bench.py --models lstm-750 --checkpoint cache/ptb-lstm-750.best.pt --threads 2 --rounds 8 --little-bits 8,4 --int8-float
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750.best.pt --threads 2 --rounds 8 --little-bits 8,4 --int8-float
# the retrained 750-unit models on the Intel machine, with the contribution-score masks beside eq. 5's
python scripts/bench.py --models lstm-750 --checkpoint cache/ptb-lstm-750.best.pt --threads 2 --rounds 8 --little-bits 8,4 --contribution
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750.best.pt --threads 2 --rounds 8 --little-bits 8,4 --contribution
# session 22 on the AMD machine: second trainings of the 750-unit recipes (train_lm.py … --out cache/ptb-*-750-r2.pt)
python scripts/bench.py --models lstm-750 --checkpoint cache/ptb-lstm-750-r2.best.pt --threads 2 --rounds 8 --little-bits 8,4 --contribution
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750-r2.best.pt --threads 2 --rounds 8 --little-bits 8,4 --contribution
# the GRU at ε = 0.3, where its quality loss at 50 % vanishes (results/lm-quality-ptb.json, part eps): rows gru-750-eps0.3
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750.best.pt --threads 2 --rounds 8 --little-bits 8,4 --eps 0.3 --int8-float
python scripts/bench.py --models gru-1500 --checkpoint cache/ptb-gru-1500.best.pt --threads 2 --rounds 8 --little-bits 8,4 --int8-float
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500.best.pt --target "llvm -mcpu=znver4" --threads 2 --rounds 16 --little-bits 8,4 --int8-float
# the host's own -mcpu on the Intel machine (sapphirerapids), the default model with the checkpoint where one exists
# (its rows of session 21 ran random weights: no trained LSTM-1500 had survived)
python scripts/bench.py --models lstm-1500 --target host --threads 2 --rounds 8 --little-bits 8,4
# session 24 on the AMD machine: the same decoder layer of the retrained GNMT-1024 (train_nmt.py --hidden 1024 --epochs 2
# --dropout 0.3 --out cache/multi30k-gnmt-1024-r2.pt; the first checkpoint was lost)
python scripts/bench.py --models gnmt-1024-2048 --checkpoint cache/multi30k-gnmt-1024-r2.best.pt --decoder-layer 0 --threads 2 --rounds 8 --little-bits 8,4 --int8-float
# session 25 on the AMD machine: the paper's main model retrained (train_lm.py --rnn LSTM --hidden 1500 --dropout 0.65
# --epochs 6 --out cache/ptb-lstm-1500-r2.pt; the first checkpoint was lost): real masks on PTB text
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r2.best.pt --threads 2 --rounds 16 --little-bits 8,4
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r2.best.pt --target "llvm -mcpu=znver4" --threads 2 --rounds 16 --little-bits 8,4
# session 26 on the AMD machine: each model's masked GEMV decided inside its step on its real masks (tune.py --in-step
# writes tuning_logs/llvm-broadwell/summary.json), then its rows re-measured with the new verdict
python scripts/tune.py --in-step --checkpoint cache/ptb-lstm-1500-r2.best.pt
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r2.best.pt --threads 2 --rounds 16 --little-bits 8,4
python scripts/tune.py --in-step --model gnmt-1024-2048 --checkpoint cache/multi30k-gnmt-1024-r2.best.pt --decoder-layer 0
python scripts/bench.py --models gnmt-1024-2048 --checkpoint cache/multi30k-gnmt-1024-r2.best.pt --decoder-layer 0 --threads 2 --rounds 8 --little-bits 8,4 --int8-float
for m in lstm gru; do
  python scripts/tune.py --in-step --model $m-750 --checkpoint cache/ptb-$m-750-r2.best.pt
  python scripts/bench.py --models $m-750 --checkpoint cache/ptb-$m-750-r2.best.pt --threads 2 --rounds 8 --little-bits 8,4 --contribution
done
# session 27 on the AMD machine: speed-ups paired round by round (bench.paired_speedup), the contribution-score engine
# beside eq. 5's; the host's own -mcpu (znver4)
# gets its masked GEMV decided in its step too (its first tuning log: tuning_logs/llvm-znver4/summary.json).
# Session 28 re-ran the first command, which since then times INT4 W_LL with contribution-score masks too
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r2.best.pt --threads 2 --rounds 16 --little-bits 8,4 --contribution
python scripts/tune.py --in-step --target "llvm -mcpu=znver4" --checkpoint cache/ptb-lstm-1500-r2.best.pt
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r2.best.pt --target "llvm -mcpu=znver4" --threads 2 --rounds 16 --little-bits 8,4
# session 29 on the AMD machine: every AMD row again at one revision in one sitting, the in-step breakdown interleaved
# over rounds (bench.step_breakdowns); the random-weight layers (no trained model of those shapes survived) at 12 rounds
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r2.best.pt --threads 2 --rounds 16 --little-bits 8,4 --contribution
python scripts/bench.py --models gnmt-1024-2048 --checkpoint cache/multi30k-gnmt-1024-r2.best.pt --decoder-layer 0 --threads 2 --rounds 16 --little-bits 8,4 --contribution
python scripts/bench.py --models gru-1500 --threads 2 --rounds 12 --little-bits 8,4
python scripts/bench.py --models lstm-750 --checkpoint cache/ptb-lstm-750-r2.best.pt --threads 2 --rounds 24 --little-bits 8,4 --contribution
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750-r2.best.pt --threads 2 --rounds 12 --little-bits 8,4 --contribution
python scripts/bench.py --models gnmt-1024-1024 --threads 2 --rounds 12 --little-bits 8,4
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750-r2.best.pt --eps 0.3 --threads 2 --rounds 12 --little-bits 8,4
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r2.best.pt --target "llvm -mcpu=znver4" --threads 2 --rounds 16 --little-bits 8,4
# session 30 on the AMD machine: LSTM-1500 again (the paper's little module), then with the learned projection at
# ε = 0.9 (k = 214 instead of 417: half the little module's bytes)
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r2.best.pt --threads 2 --rounds 16 --little-bits 8,4 --contribution
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r2.best.pt --eps 0.9 --projection learned --threads 2 --rounds 16 --little-bits 8,4 --contribution
# session 31 on the Intel machine: GRU-750 (ptb-gru-750) with the learned projection at k = 128 (its quality: the
# allocation study's part k), then the paper's little module, in one sitting
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750.best.pt --k 128 --projection learned --threads 2 --rounds 12 --little-bits 8,4 --contribution
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750.best.pt --threads 2 --rounds 12 --little-bits 8,4 --contribution
# session 32 on the Intel machine: the learned projection at k = 128 on the two layers of the issue's goals (random
# weights: no trained LSTM-1500 or GNMT-1024 survived to this machine; the rows say so), then the masked GEMV's knobs
# decided inside that LSTM-1500 step on this machine
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
python scripts/bench.py --models gnmt-1024-2048 --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
python scripts/tune.py --in-step --model lstm-1500 --k 128 --projection learned
# session 33 on the Intel machine: the k = 128 little kernels' verdicts, then the paper's little module on the same
# random layers (rows keyed by their weights now stand beside the trained checkpoints' rows of those models)
python scripts/tune.py --k 128 --projection learned --tasks project,little_gemv
python scripts/bench.py --models lstm-1500 --threads 2 --rounds 8 --little-bits 8,4
python scripts/bench.py --models gnmt-1024-2048 --threads 2 --rounds 8 --little-bits 8,4
# then LSTM-1500 retrained on this machine (train_lm.py --rnn LSTM --hidden 1500 --dropout 0.65 --epochs 6 --threads 2
# --out cache/ptb-lstm-1500-r3.pt) on its real masks: k = 128 learned, then the paper's little module, one sitting
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r3.best.pt --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4 --contribution
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r3.best.pt --threads 2 --rounds 8 --little-bits 8,4
# session 34 on the Intel machine: the same r3 model and little module (k = 128 learned; INT4 scales now searched) for
# the host's own -mcpu (sapphirerapids: VNNI little GEMVs, no tuning database for it: default schedules)
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r3.best.pt --k 128 --projection learned --target host --threads 2 --rounds 8 --little-bits 8,4 --contribution
# session 35 on the Intel machine: the same (r3, k = 128 learned) after INT4 W_LL's columns were equalised onto the
# projection's row scales (every projection kernel now multiplies by them), broadwell then the host's own -mcpu
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r3.best.pt --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4 --contribution
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r3.best.pt --k 128 --projection learned --target host --threads 2 --rounds 8 --little-bits 8,4 --contribution
# session 36 on the Intel machine: the step's Relax function compiled to native code (decoder.so, exec_mode
# "compiled"); the same model again, broadwell with 16 rounds (an 8-round run before it was replaced), the host's own
# -mcpu, then the GNMT layer of session 32's k = 128 rows
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r3.best.pt --k 128 --projection learned --threads 2 --rounds 16 --little-bits 8,4 --contribution
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r3.best.pt --k 128 --projection learned --target host --threads 2 --rounds 8 --little-bits 8,4 --contribution
python scripts/bench.py --models gnmt-1024-2048 --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
# session 38 on the Intel machine: the same three after the integer little GEMV's phaddd tail (session 37), 8 rounds each
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r3.best.pt --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4 --contribution
python scripts/bench.py --models lstm-1500 --checkpoint cache/ptb-lstm-1500-r3.best.pt --k 128 --projection learned --target host --threads 2 --rounds 8 --little-bits 8,4 --contribution
python scripts/bench.py --models gnmt-1024-2048 --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
# session 39 on an AMD EPYC (Zen 3, AVX2, 32 MB L3) with no trained checkpoint: k = 128 learned on random weights,
# broadwell, then the host's own znver3 after its masked GEMV was decided in the step (16 rounds each)
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --threads 2 --rounds 16 --little-bits 8,4
python scripts/tune.py --target host --model lstm-1500 --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --target host --threads 2 --rounds 16 --little-bits 8,4
python scripts/bench.py --models gnmt-1024-2048 --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
# session 40 on the same Zen 3: the other four models (random weights, k = 128 learned); gnmt-1024-1024's masked GEMV
# decided in the step first, then GRU-1500 and gnmt-1024-1024 re-measured on the new default knobs (4 rows, no prefetch)
python scripts/bench.py --models lstm-750 --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
python scripts/bench.py --models gru-750 --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
python scripts/tune.py --model gnmt-1024-1024 --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16
python scripts/bench.py --models gru-1500 --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
python scripts/bench.py --models gnmt-1024-1024 --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
python scripts/tune.py --model gru-1500 --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16
# session 41 on the same Zen 3: gnmt-1024-2048 again with 16 rounds (its 8-round quartiles had spanned 1.24–1.85×)
python scripts/bench.py --models gnmt-1024-2048 --k 128 --projection learned --threads 2 --rounds 16 --little-bits 8,4
# then the 750-unit PTB recipes retrained here (train_lm.py … --threads 1 --out cache/ptb-{lstm,gru}-750-r4.pt), real masks
python scripts/bench.py --models lstm-750 --checkpoint cache/ptb-lstm-750-r4.best.pt --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750-r4.best.pt --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
# session 42 on the same Zen 3: the host's own znver3 for the models that had only broadwell rows here (its tuning log
# holds in-step verdicts alone: every other kernel builds its default schedule, as broadwell's k = 128 kernels do)
python scripts/bench.py --models gnmt-1024-2048 --k 128 --projection learned --target host --threads 2 --rounds 8 --little-bits 8,4
python scripts/bench.py --models gnmt-1024-1024 --k 128 --projection learned --target host --threads 2 --rounds 8 --little-bits 8,4
python scripts/bench.py --models lstm-750 --checkpoint cache/ptb-lstm-750-r4.best.pt --k 128 --projection learned --target host --threads 2 --rounds 8 --little-bits 8,4
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750-r4.best.pt --k 128 --projection learned --target host --threads 2 --rounds 8 --little-bits 8,4
python scripts/bench.py --models gru-1500 --k 128 --projection learned --target host --threads 2 --rounds 8 --little-bits 8,4
# then LSTM-750's masked GEMV decided in the step on znver3 (default kept) and its two targets run back to back
python scripts/tune.py --target host --model lstm-750 --checkpoint cache/ptb-lstm-750-r4.best.pt --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16
python scripts/bench.py --models lstm-750 --checkpoint cache/ptb-lstm-750-r4.best.pt --k 128 --projection learned --threads 2 --rounds 8 --little-bits 8,4
python scripts/bench.py --models lstm-750 --checkpoint cache/ptb-lstm-750-r4.best.pt --k 128 --projection learned --target host --threads 2 --rounds 8 --little-bits 8,4
# session 43 on the same Zen 3: LSTM-1500 again on both targets, back to back (replacing session 39's rows)
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --threads 2 --rounds 16 --little-bits 8,4
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --target host --threads 2 --rounds 16 --little-bits 8,4
# then both r4 750-unit trainings with the little modules that meet the quality goals (learned, eq. 3's k, contribution)
for m in gru lstm; do python scripts/bench.py --models $m-750 --checkpoint cache/ptb-$m-750-r4.best.pt --projection learned --threads 2 --rounds 8 --little-bits 8,4 --contribution; done
# session 44 on the same Zen 3: gnmt-1024-1024 on both targets back to back with 16 rounds (replacing the 8-round runs),
# then LSTM-1500 on both with ratio 1 added (the step reading no big row: the little side alone, fixed_cost.py)
python scripts/bench.py --models gnmt-1024-1024 --k 128 --projection learned --threads 2 --rounds 16 --little-bits 8,4
python scripts/bench.py --models gnmt-1024-1024 --k 128 --projection learned --target host --threads 2 --rounds 16 --little-bits 8,4
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --threads 2 --rounds 16 --little-bits 8,4 --ratios 0.1,0.3,0.5,0.7,0.9,1.0
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --target host --threads 2 --rounds 16 --little-bits 8,4 --ratios 0.1,0.3,0.5,0.7,0.9,1.0
# session 45 on the same Zen 3: the three goal models again on both targets, now with the cold in-step breakdown (Table 5
# as the paper measures it) and each phase's bytes in the rows (the README's phase table; rows replace sessions 40-44's),
# then GRU-750 r4 with 16 rounds (its 8-round rows had the dense step at 0.31 ms against 0.18-0.22 in its other runs)
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --threads 2 --rounds 16 --little-bits 8,4 --ratios 0.1,0.3,0.5,0.7,0.9,1.0
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --target host --threads 2 --rounds 16 --little-bits 8,4 --ratios 0.1,0.3,0.5,0.7,0.9,1.0
for m in gnmt-1024-1024 gnmt-1024-2048; do for t in "" "--target host"; do
  python scripts/bench.py --models $m --k 128 --projection learned $t --threads 2 --rounds 16 --little-bits 8,4
done; done
python scripts/bench.py --models gru-750 --checkpoint cache/ptb-gru-750-r4.best.pt --projection learned --threads 2 --rounds 16 --little-bits 8,4 --contribution
# session 46 on the same Zen 3: the masked GEMV's in-step grid gained each thread a contiguous share of the row list;
# the goal models' masked GEMVs decided again on both targets, then the goal models re-timed on both (16 rounds)
for m in gnmt-1024-1024 gnmt-1024-2048; do python scripts/tune.py --target host --model $m --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16; done
python scripts/tune.py --target host --model lstm-1500 --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16
for m in gnmt-1024-1024 gnmt-1024-2048; do python scripts/tune.py --model $m --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16; done
for m in gnmt-1024-1024 gnmt-1024-2048; do for t in "" "--target host"; do
  python scripts/bench.py --models $m --k 128 --projection learned $t --threads 2 --rounds 16 --little-bits 8,4
done; done
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --target host --threads 2 --rounds 16 --little-bits 8,4 --ratios 0.1,0.3,0.5,0.7,0.9,1.0
# then LSTM-1500 on broadwell (a run at 1502a1d on its Xeon-decided 4-row verdict: 1.62-1.73x at 50 %), its masked GEMV
# decided on this host, and re-timed
python scripts/tune.py --model lstm-1500 --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16
python scripts/bench.py --models lstm-1500 --k 128 --projection learned --threads 2 --rounds 16 --little-bits 8,4 --ratios 0.1,0.3,0.5,0.7,0.9,1.0
# session 47, on an AMD EPYC of the Zen 4 generation (znver4: AVX-512 with VNNI, 2 cores, 32 MB of L3): cell updates
# without clamped loads and two-pass masks (be01bd6); the goal models on both targets, 16 rounds each
for m in lstm-1500; do for t in "" "--target host"; do
  python scripts/bench.py --models $m --k 128 --projection learned $t --threads 2 --rounds 16 --little-bits 8,4 --ratios 0.1,0.3,0.5,0.7,0.9,1.0
done; done
for m in gnmt-1024-1024 gnmt-1024-2048; do for t in "" "--target host"; do
  python scripts/bench.py --models $m --k 128 --projection learned $t --threads 2 --rounds 16 --little-bits 8,4
done; done
# then the GNMT layers' masked GEMVs decided for the host's znver4 (it had a verdict for LSTM-1500 only, from the Zen 4 of
# session 40) and the two layers re-timed on it
for m in gnmt-1024-1024 gnmt-1024-2048; do python scripts/tune.py --target host --model $m --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16; done
for m in gnmt-1024-1024 gnmt-1024-2048; do
  python scripts/bench.py --models $m --k 128 --projection learned --target host --threads 2 --rounds 16 --little-bits 8,4
done
# then the other models on both targets (random weights, 16 rounds): the dense step against the peers
for m in lstm-750 gru-750 gru-1500; do for t in "" "--target host"; do
  python scripts/bench.py --models $m --k 128 --projection learned $t --threads 2 --rounds 16 --little-bits 8,4
done; done
# session 48 (the same Zen 4): a GRU's two GEMVs one pass over [W_ih | W_hh] (kernels.gemv_pair, masked_gemv_pair);
# the GRU models re-timed on both targets (random weights, 16 rounds)
for m in gru-1500 gru-750; do for t in "" "--target host"; do
  python scripts/bench.py --models $m --k 128 --projection learned $t --threads 2 --rounds 16 --little-bits 8,4
done; done
# session 49 (the same Zen 4): the GEMV rules and the GRU pair nest at 12 rows in flight and one vector register of
# lanes (schedules.rules.vector_lanes); every model re-timed on both targets (random weights, 16 rounds)
for m in lstm-750 lstm-1500 gru-750 gru-1500 gnmt-1024-1024 gnmt-1024-2048; do for t in "" "--target host"; do
  python scripts/bench.py --models $m --k 128 --projection learned $t --threads 2 --rounds 16 --little-bits 8,4
done; done
# then the masked GEMVs of the GNMT layers and LSTM-1500 decided in the step for broadwell on this host (the grid with
# 8-lane settings since 3e9086a; their verdicts had been made on the Zen 3), and the three re-timed on broadwell
for m in gnmt-1024-1024 gnmt-1024-2048 lstm-1500; do
  python scripts/tune.py --target "llvm -mcpu=broadwell" --model $m --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16
done
for m in gnmt-1024-1024 gnmt-1024-2048 lstm-1500; do
  python scripts/bench.py --models $m --k 128 --projection learned --threads 2 --rounds 16 --little-bits 8,4
done
# and LSTM-1500's masked GEMV searched in the step on this host for znver4 (kept its verdict: no re-timing)
python scripts/tune.py --target host --model lstm-1500 --k 128 --projection learned --in-step --rounds 4 --confirm-rounds 16
# then LSTM-1500 once more on both targets with the ratio-1 rows the fixed-cost fit reads (the loops above ran the
# default ratios, and a run replaces every row of its model and target)
for t in "" "--target host"; do
  python scripts/bench.py --models lstm-1500 --k 128 --projection learned $t --threads 2 --rounds 16 --little-bits 8,4 --ratios 0.1,0.3,0.5,0.7,0.9,1.0
done

#!/usr/bin/env bash
# Everything lithos does on the lent GPU, in one call: install, GPU tests, benchmarks.
# Usage (on the device machine, from the repo root): bash scripts/device_run.sh [what...]
#   what: probe | gates | matmul | tests | atoms | partitions | colocation | ml | study | rightsizing | rightsized | kernels |
#         diag | arms | mps_split | mps_confine | services | ml_models | stacking | rightsize_services
#   tests: the GPU tier, bounded by TESTS_TIMEOUT (420 s) and each test by GPU_TEST_TIMEOUT (150 s);
#   (default: probe tests atoms partitions colocation ml rightsizing; ml: the default ML study, 3 interleaved
#   rounds at load 0.5, ML_DURATION (--ml-duration, default the bench's 1.5 s) per scenario and round;
#   study: the interleaved ML study one pair per command, for each of STUDY_PAIRS (training batch_inference),
#   ROUNDS (3) rounds of ML_DURATION (4) s at LOADS (0.5; a comma list adds a load sweep);
#   diag: the host-time diagnostics of scripts/ (launch cost, inference host, best-effort host);
#   DIAGS picks among them; arms: an interleaved A/B of scripts/diag_arms.py on the ML pairs
#   PAIRS (default ml_training; ml_batch is the batch-inference pair), ARMS (default
#   default,all_planned) over ROUNDS (3) rounds of 6 s, with the static splits at
#   STATIC_SHARES (0.25,0.375,0.5): each round runs, per pair, the inference alone, each
#   share and each arm for about 8 s; about 3 minutes per pair with the defaults;
#   mps_split: scripts/diag_mps_split.py, interleaved over ROUNDS: the static split in one
#   process, the static split with a process per tenant under MPS at MPS_SHARES
#   (0.5,0.375,0.25) and lithos across processes in the arms MPS_ARMS
#   (lithos_mps,lithos_mps_be_below_normal,lithos_mps_atom_500;
#   arm@share for another share of MPS_SHARES), on MPS_PAIRS (training; training:unsplit
#   for the job with its GEMMs unsplit); MPS_THREAD_STATIC=0 leaves out the in-process split;
#   arm lithos_mps_rightsized: each request on the TPCs its batch needs; MPS_LC_BATCH=lo,hi
#   the inference batches (default 1,8); about 5 minutes;
#   gates: scripts/probe_gates.py, the stream-memory-operation gates (order, independence of streams,
#   across processes, host cost, graphs on green contexts), about 20 s;
#   faults: scripts/fault_isolation.py, a best-effort process that traps or reads out of bounds beside a
#   latency-critical one, without and under MPS, about 1 minute;
#   soak: scripts/soak.py --gpu for SOAK_MINUTES (default 3) real minutes of eight tenants coming and going;
#   suites: scripts/suite_proof.py, numba-cuda's and CuPy's own tests (third_party/cupy_tests, v14.2.0)
#   plainly and under the opt-in at one-block atoms, the subsets SUITE_NUMBA / SUITE_CUPY, each pytest
#   run bounded by SUITE_TIMEOUT (55 s), about 4 minutes; ufunc_cost: scripts/diag_ufunc_cost.py, the host
#   cost of an intercepted CuPy ufunc launch against CuPy's own, about 20 s;
#   matmul: scripts/diag_matmul_vs_gemm.py, cupy.matmul (cuBLAS, run whole) against kernels.gemm (atomized) in a
#   best-effort job: each alone, and the requests of a latency-critical tenant beside each (MATMUL_SECONDS, default 4,
#   per arm), about 40 s;
#   mps_confine: scripts/diag_mps_confine.py, whether two MPS clients' green contexts are
#   different physical SMs, about 20 s;
#   rightsized: the ML bench's inference + training pair, lithos with and without
#   right-sizing, one round per inference batch range of RS_LC_BATCHES (default "1 1 1,8":
#   batch 1 twice, then batches 1-8), about 80 s each;
#   services: lithos_atom.bench.services_alone, each model service alone at load 0.5 of its capacity,
#   graph replay vs Python launches (SVC_DURATION s each, default 2; SVC_LIST picks services), about 2-3 minutes;
#   ml_models: the ML bench with a model service (each of ML_SERVICES, default "llama-1b resnet50") beside the
#   GPT-2 training job, scenarios lc_alone,be_alone,streams,priorities,static_split,lithos, ROUNDS (3)
#   interleaved rounds of ML_DURATION s (here default 2) at load 0.5, about 1 minute per service and round;
#   stacking: lithos_atom.bench.stacking, Llama-1B decode over ResNet-50 and BERT-base, without and with the
#   GPT-2 job (STACK_BE=none: without only), against MPS, priorities, time-sliced processes and static splits
#   (STACK_DURATION s, default 2; STACK_SCENARIOS to pick), about 3-4 minutes;
#   rightsize_services: the right-sizing report on each model service's whole request at its batch sizes
#   (RS_SERVICES, default "llama-1b resnet50 bert-base llama-8b"), cut at 150 s)
# Writes logs, JSON and plots to a staging folder, packed at the end into $OUT/results.tgz
# (the device tool returns at most 8 files), with the GPU-test log beside it.
set -uo pipefail
OUT=${OUT:-$PWD/out}
STAGE=$(mktemp -d /tmp/lithos-out.XXXX)
mkdir -p "$OUT"
trap 'tar czf "$OUT/results.tgz" -C "$STAGE" . ; cp "$STAGE"/gpu-tests.log "$OUT"/ 2>/dev/null' EXIT
export PYTHONUNBUFFERED=1 LITHOS_CACHE_DIR=/tmp/lithos-cache LITHOS_TRACE_DIR="$STAGE"
what=("$@"); [ ${#what[@]} -eq 0 ] && what=(probe tests atoms partitions colocation ml rightsizing)
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$STAGE/install.log" 2>&1 || { cat "$STAGE/install.log"; exit 1; }
status=0
for w in "${what[@]}"; do
  echo "=== $w ($(date +%T))"
  case "$w" in
    probe)
      { nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw --format=csv
        python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)"
        python3 -c "from lithos_atom._compat import import_numba_cuda as f; c=f(); print('numba-cuda ok', c.get_current_device().name)"
        python3 -c "from cuda.bindings import nvjitlink, nvrtc; print('nvjitlink', nvjitlink.version(), 'nvrtc', nvrtc.nvrtcVersion())"
      } 2>&1 | tee "$STAGE/probe.log" ;;
    tests)
      # bounded below the device tool's limit, so the logs come back (one test: GPU_TEST_TIMEOUT, 150 s)
      timeout -s INT "${TESTS_TIMEOUT:-420}" python3 -m pytest -q -m gpu tests -p no:cacheprovider \
        --junitxml="$STAGE/gpu-tests.xml" 2>&1 | tee "$STAGE/gpu-tests.log" | tail -40
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    kernels)
      python3 -m kernels.bench --size bench --json "$STAGE/bench-kernels.json" 2>&1 | tee "$STAGE/bench-kernels.log" | tail -60
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    rightsizing)
      python3 -m lithos_atom.bench.rightsize_bench --out "$STAGE/rightsizing" 2>&1 | tee "$STAGE/bench-rightsizing.log" | tail -30
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    rightsized)
      i=0
      for batches in ${RS_LC_BATCHES:-1 1 1,8}; do
        i=$((i + 1))
        python3 -m lithos_atom.bench --ml --ml-pairs training --ml-scenarios lc_alone,be_alone,lithos,lithos_rightsized \
          --lc-batch "$batches" --ml-duration "${ML_DURATION:-6}" --rounds 1 --json "$STAGE/bench-rightsized-$i.json" \
          --plot "$STAGE/plots-rightsized-$i" 2>&1 | tee "$STAGE/bench-rightsized-$i.log" | tail -25
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      done ;;
    study)
      for pair in ${STUDY_PAIRS:-training batch_inference}; do
        # the static splits up to 0.75 of the TPCs for inference, so the line reaches lithos' p99
        python3 -m lithos_atom.bench --ml --ml-pairs "$pair" --rounds "${ROUNDS:-3}" --ml-duration "${ML_DURATION:-4}" \
          --static-sweep "${STATIC_SWEEP:-0.25,0.375,0.625,0.75}" \
          --load "${LOADS:-0.5}" --json "$STAGE/bench-study-$pair.json" --plot "$STAGE/plots-study-$pair" 2>&1 \
          | tee "$STAGE/bench-study-$pair.log" | tail -60
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      done ;;
    atoms|partitions|colocation|ml)
      extra=(); [ "$w" = ml ] && [ -n "${ML_DURATION:-}" ] && extra=(--ml-duration "$ML_DURATION")
      python3 -m lithos_atom.bench --"$w" ${extra[@]+"${extra[@]}"} --json "$STAGE/bench-$w.json" --plot "$STAGE/plots-$w" 2>&1 | tee "$STAGE/bench-$w.log" | tail -40
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    arms)
      PYTHONPATH=$PWD/scripts:$PWD python3 scripts/diag_arms.py "$STAGE/diag-arms.json" 6 "${ROUNDS:-3}" \
        "${ARMS:-default,all_planned}" "${PAIRS:-ml_training}" "${STATIC_SHARES:-0.25,0.375,0.5}" 2>&1 \
        | tee "$STAGE/diag-arms.log" | tail -40
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    suites)
      python3 -m pip install -q --no-deps third_party/wheels/*.whl >> "$STAGE/install.log" 2>&1  # numba-cuda's test dependency
      python3 scripts/suite_proof.py --numba "${SUITE_NUMBA:-test_gufunc,test_vectorize,test_transpose,test_sm}" \
        --cupy "${SUITE_CUPY:-core_tests/test_elementwise.py,core_tests/test_reduction.py,math_tests/test_sumprod.py}" \
        --timeout "${SUITE_TIMEOUT:-55}" --json "$STAGE/suite-proof.json" 2>&1 | tee "$STAGE/suite-proof.log" | tail -60
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    ufunc_cost)
      python3 scripts/diag_ufunc_cost.py --json "$STAGE/ufunc-cost.json" 2>&1 | tee "$STAGE/ufunc-cost.log" | tail -12
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    matmul)
      PYTHONPATH=$PWD python3 scripts/diag_matmul_vs_gemm.py --seconds "${MATMUL_SECONDS:-4}" \
        --json "$STAGE/diag-matmul.json" 2>&1 | tee "$STAGE/diag-matmul.log" | tail -12
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    gates)
      python3 scripts/probe_gates.py "$STAGE/probe-gates.json" 2>&1 | tee "$STAGE/probe-gates.log" | tail -20
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    faults)
      python3 scripts/fault_isolation.py --out "$STAGE/faults" 2>&1 | tee "$STAGE/faults.log" | tail -30
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    soak)
      python3 scripts/soak.py --gpu --minutes "${SOAK_MINUTES:-3}" --out "$STAGE/soak" 2>&1 | tee "$STAGE/soak.log" | tail -30
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    mps_confine)
      python3 scripts/diag_mps_confine.py "$STAGE/diag-mps-confine.json" 2>&1 | tee "$STAGE/diag-mps-confine.log" | tail -10
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    mps_split)
      PYTHONPATH=$PWD/scripts:$PWD python3 scripts/diag_mps_split.py "$STAGE/diag-mps-split.json" 6 "${ROUNDS:-3}" \
        "${MPS_PAIRS:-training}" "${MPS_SHARES:-0.5,0.375,0.25}" "${MPS_ARMS:-lithos_mps,lithos_mps_be_below_normal,lithos_mps_atom_500}" 2>&1 \
        | tee "$STAGE/diag-mps-split.log" | tail -40
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    diag)
      for d in ${DIAGS:-diag_launch_cost diag_ml_host diag_be_host}; do
        PYTHONPATH=$PWD python3 scripts/$d.py "$STAGE/$d.json" 2>&1 | tee "$STAGE/$d.log" | tail -20
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      done ;;
    services)
      python3 -m lithos_atom.bench.services_alone --duration "${SVC_DURATION:-2}" ${SVC_LIST:+--services "$SVC_LIST"} \
        --json "$STAGE/services-alone.json" 2>&1 | tee "$STAGE/services-alone.log" | tail -30
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    ml_models)
      for svc in ${ML_SERVICES:-llama-1b resnet50}; do
        python3 -m lithos_atom.bench --ml --lc-service "$svc" --ml-pairs gpt2_training \
          --ml-scenarios lc_alone,be_alone,streams,priorities,static_split,lithos --ml-duration "${ML_DURATION:-2}" \
          --rounds "${ROUNDS:-3}" \
          --json "$STAGE/bench-ml-$svc.json" --plot "$STAGE/plots-ml-$svc" 2>&1 | tee "$STAGE/bench-ml-$svc.log" | tail -30
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      done ;;
    stacking)
      python3 -m lithos_atom.bench.stacking --duration "${STACK_DURATION:-2}" ${STACK_BE:+--be-job "$STACK_BE"} \
        ${STACK_SCENARIOS:+--scenarios "$STACK_SCENARIOS"} --json "$STAGE/stacking.json" --plot "$STAGE/plots-stacking" 2>&1 \
        | tee "$STAGE/stacking.log" | tail -40
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    rightsize_services)
      svcs=(); for s in ${RS_SERVICES:-llama-1b resnet50 bert-base llama-8b}; do svcs+=(--service "$s"); done
      python3 -m lithos_atom.bench.rightsize_bench "${svcs[@]}" --energy-window 0 --max-seconds 150 \
        --out "$STAGE/rightsize-services" 2>&1 | tee "$STAGE/rightsize-services.log" | tail -30
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    *) echo "unknown step $w"; status=2 ;;
  esac
done
exit $status

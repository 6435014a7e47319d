#!/bin/sh
# Regenerate bundle/examples/ (the pictures the README shows) from bundle/default.ldmb
# with build/ldmgen.  Same seed and options as the README states; byte-identical on
# every run.
set -e
cd "$(dirname "$0")/.."
G=${LDMGEN:-build/ldmgen}
E=bundle/examples
export LDM_BACKEND=cpu
$G --no-history -q --seed 42 -o $E/red-apple.png --save-latent $E/red-apple-latent.png "red apple"
$G --no-history -q --seed 42 -o $E/smiling-cat-face.png "smiling cat face"
for p in "red apple" "smiling cat face"; do
    f=$(echo "$p" | tr ' ' '-')
    $G --no-history -q --seed 42 --grid g=1,3,7.5,12 --grid n=10,25,50 -o "$E/grid-$f.png" "$p"
done

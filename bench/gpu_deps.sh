#!/usr/bin/env bash
# Packs what a CUDA machine with Python 3.12 and PyTorch but none of our other
# requirements, and no network, needs to run bench/gpu_check.sh: .whl/site.tar.xz, to be
# unpacked onto PYTHONPATH there. Run here, with network, from the repository root:
#
#   bash bench/gpu_deps.sh
#
# It resolves ray[default,data,train,tune] and our requirements for CPython 3.12 and
# leaves out PRESENT, the large packages that the GPU machines' image already has
# (numpy, scipy, pandas, pyarrow, matplotlib, grpcio, protobuf, ...). Ray is unpacked
# without its Java jars, tests and the UI's source maps, and its binaries' symbol tables
# are stripped (79 MB wheel -> ~30 MB compressed; ~56 MB in all). pesq has no wheel on
# PyPI: it is built with a local Python 3.12 (python3.12, or $PYTHON312). The
# dashboard's requirements (ray[default]) are needed: without Ray's state API a Tune
# search hangs after its first trial (tune/search.py, require_state_api).
set -euo pipefail
PY=3.12
PRESENT="numpy scipy pandas pyarrow matplotlib pillow fonttools contourpy kiwisolver grpcio protobuf six pyyaml
requests urllib3 certifi idna charset_normalizer attrs filelock click msgpack packaging typing_extensions tqdm
joblib cycler pyparsing python_dateutil tzdata markupsafe fsspec cloudpickle prometheus_client wrapt"
work=$(mktemp -d)
python3 -m pip download --quiet --only-binary=:all: --python-version $PY --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    -d "$work/wheels" "ray[default,data,train,tune]==2.60.0" soundfile soxr optuna pystoi noisereduce \
    espeakng-loader
for name in $PRESENT; do rm -f "$work"/wheels/"$name"-[0-9]*.whl; done
"${PYTHON312:-python$PY}" -m pip wheel --quiet --no-deps -w "$work/wheels" pesq==0.0.4
mkdir "$work/site"
for wheel in "$work"/wheels/*.whl; do unzip -q -o "$wheel" -d "$work/site"; done
rm -rf "$work"/site/ray/{jars,tests} "$work"/site/ray/*/tests
# The dashboard (state API) refuses to start without its UI files; their source maps can go.
find "$work"/site/ray/dashboard/client/build -name "*.map" -delete
strip --strip-unneeded "$work"/site/ray/_raylet.so "$work"/site/ray/core/src/ray/{gcs/gcs_server,raylet/raylet}
mkdir -p .whl
tar -cf - -C "$work/site" . | xz -T2 -6 > .whl/site.tar.xz
rm -rf "$work"
ls -l .whl/site.tar.xz

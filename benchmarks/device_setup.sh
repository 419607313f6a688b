#!/bin/sh
# On the GPU machine, after the staging calls of stage_for_device.py's docstring: installs the carried wheels to
# /tmp/site and the carried weights to /tmp/w. Use: . benchmarks/device_setup.sh
python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/whl/*.whl 2>/dev/null
mkdir -p /tmp/w && cp .carry/lw/* /tmp/w/ 2>/dev/null
[ -d .carry/whl2 ] && cp .carry/whl2/*.pth /tmp/w/
export PYTHONPATH="$PWD/src:/tmp/site" WILDREID_WEIGHTS=/tmp/w WILDREID_CACHE=/tmp/cache
